"""Face crops preprocessed exactly as the evaluation pipeline preprocesses images."""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from manet_jax.data.augment import resize_bilinear, to_unit_range


@functools.cache
def _eval_view(size: int) -> tf.types.experimental.GenericFunction:
    return tf.function(lambda crop: to_unit_range(resize_bilinear(crop, size, size)),
                       input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])


def eval_view(crop: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 crop as `manet_jax.data.augment.eval_image` makes the evaluation view of a
    decoded image: resized to size x size (PIL's bilinear), float32 in [0, 1]."""
    return _eval_view(size)(crop).numpy()
