"""Exporting a model as a TensorFlow SavedModel through jax2tf, for TF Serving and TFLite."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import tensorflow as tf
from jax.experimental import jax2tf

from manet_jax.data.augment import to_unit_range
from manet_jax.bundle import Bundle
from manet_jax.inference.stablehlo import PLATFORMS, input_spec, serving_fn, write_metadata


def export_savedmodel(bundle: Bundle, directory: Path, platforms: Sequence[str] = PLATFORMS) -> Path:
    """Writes a TensorFlow SavedModel with two signatures, each returning the OUTPUTS:
    `serving_default` takes uint8 images (batch, S, S, 3) and `serving_float` float32 ones in [0, 1].
    The variables are TF variables; the computation is one jax2tf (StableHLO) call."""
    size = bundle.spec.image_size
    module = tf.Module()
    module.manet_variables = jax.tree_util.tree_map(lambda v: tf.Variable(v, trainable=False), bundle.variables)
    serve = jax2tf.convert(serving_fn(bundle), polymorphic_shapes=[None, f"(batch, {size}, {size}, 3)"],
                           with_gradient=False, native_serialization_platforms=tuple(platforms))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def serving_float(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return serve(module.manet_variables, images)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    def serving_uint8(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return serving_float(to_unit_range(tf.cast(images, tf.float32)))

    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": serving_uint8, "serving_float": serving_float})
    inputs = {"serving_default": input_spec(bundle, "uint8"), "serving_float": input_spec(bundle, "float32")}
    write_metadata(directory, bundle, "savedmodel", inputs, platforms)
    return directory
