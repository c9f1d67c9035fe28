"""Datasets (TFDS builders) and host input pipelines for facial expression recognition.

`CANONICAL_CLASSES` is MA-Net's label order, used by every dataset. The pipelines are in
`manet_jax.data.pipeline`; `python -m manet_jax.data.prepare` builds a dataset.
"""

from manet_jax.data.labels import CANONICAL_CLASSES

__all__ = ["CANONICAL_CLASSES"]
