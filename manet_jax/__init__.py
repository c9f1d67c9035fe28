"""MA-Net for facial expression recognition in JAX/Flax.

Importing it (or any of its modules) sets nothing process-wide: the tools do, when they start
(`cli.start_runtime`)."""

__version__ = "0.1.0"
