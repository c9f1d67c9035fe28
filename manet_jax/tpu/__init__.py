"""Cloud TPU slices planned on a machine without a TPU: their devices (`slices`), the collectives
of a compiled program (`collectives`) and the plan of a run (`plan`, `python -m manet_jax.tpu_plan`)."""
