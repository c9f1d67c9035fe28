"""Exporting a model for serving without its Python code: what every export shares, and the
serialized `jax.export` (StableHLO) artifact; `savedmodel` makes the TensorFlow SavedModel.

Each export directory also holds `manet_export.json`: the format, class names, input size and
the input and output names. Exports take a batch of any size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import export as jax_export

from manet_jax.bundle import Bundle
from manet_jax.inference.predictor import OUTPUTS, outputs

PLATFORMS = ("cpu", "cuda", "tpu")
METADATA = "manet_export.json"
STABLEHLO_FILE = "manet.jax_export"


def serving_fn(bundle: Bundle) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
    """`fn(variables, images) -> OUTPUTS`, the computation every export serves: the vmapped local
    branches, what accelerators run and what converts to TFLite, for every platform."""
    return functools.partial(outputs, bundle.spec.module("vmap"), bundle.spec.beta)


def write_metadata(directory: Path, bundle: Bundle, fmt: str, inputs: dict[str, str],
                   platforms: Sequence[str], precision: str = "float32") -> None:
    """Writes METADATA, describing an export of `fmt` with `inputs` (name -> `input_spec`) computing
    in `precision` (float32, or int8 for a quantized ONNX export), and the model's face template."""
    spec = bundle.spec
    metadata = {"format": fmt, "class_names": list(spec.class_names), "image_size": spec.image_size,
                "inputs": inputs, "outputs": list(OUTPUTS), "platforms": list(platforms), "precision": precision,
                "face_template": dataclasses.asdict(spec.face_template) if spec.face_template else None}
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def input_spec(bundle: Bundle, dtype: str) -> str:
    """The metadata's description of an input of `dtype`."""
    size = bundle.spec.image_size
    scale = "in [0, 1]" if dtype == "float32" else "0-255"
    return f"{dtype}[batch, {size}, {size}, 3] RGB {scale}"


def export_stablehlo(bundle: Bundle, directory: Path, platforms: Sequence[str] = PLATFORMS) -> Path:
    """Writes `manet.jax_export`: `jax.export` of images float32 (batch, S, S, 3) in [0, 1] ->
    dict of OUTPUTS, with the variables embedded and the batch size symbolic. Load it with
    `jax.export.deserialize(path.read_bytes()).call(images)`."""
    batch, = jax_export.symbolic_shape("batch")
    size = bundle.spec.image_size
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    serve, variables = serving_fn(bundle), bundle.variables
    exported = jax_export.export(jax.jit(lambda x: serve(variables, x)), platforms=platforms)(images)
    path = directory / STABLEHLO_FILE
    path.write_bytes(exported.serialize())
    write_metadata(directory, bundle, "stablehlo", {"images": input_spec(bundle, "float32")}, platforms)
    return path
