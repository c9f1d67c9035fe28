"""The trainer and evaluator: train state, jitted steps, data parallelism, checkpoints, metrics.

Entry points: `python -m manet_jax.train` and `python -m manet_jax.evaluate`; the loop is
`manet_jax.training.run.train_and_evaluate(config, workdir)`.
"""
