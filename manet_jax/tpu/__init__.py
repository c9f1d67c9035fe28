"""Cloud TPU slices planned on a machine without a TPU: their devices (`slices`), the collectives
of a compiled program (`collectives`) and a run's train and eval steps compiled for a slice, with
the plan they make (`compiled_steps`, `python -m manet_jax.tpu_plan`)."""
