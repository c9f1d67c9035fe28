"""Exporting a model for serving without its Python code: what every export shares, and the
serialized `jax.export` (StableHLO) artifact; `savedmodel` makes the TensorFlow SavedModel.

Each export directory also holds `manet_export.json`: the format, class names, input size, the
input and output names, and the SHA-256 of each of the export's other files (`check_export`
compares them when an export is loaded). Exports take a batch of any size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import export as jax_export

from manet_jax.accelerators import PLATFORMS
from manet_jax.bundle import Bundle
from manet_jax.errors import ManetError
from manet_jax.inference.predictor import OUTPUTS, outputs

METADATA = "manet_export.json"
STABLEHLO_FILE = "manet.jax_export"


class ExportError(ManetError):
    """An export that is damaged or incomplete; the message names the file."""


def serving_fn(bundle: Bundle) -> Callable[[dict, jax.Array], dict[str, jax.Array]]:
    """`fn(variables, images) -> OUTPUTS`, the computation every export serves: the vmapped local
    branches, what accelerators run and what converts to TFLite, for every platform."""
    return functools.partial(outputs, bundle.spec.module("vmap"), bundle.spec.beta)


def write_metadata(directory: Path, bundle: Bundle, fmt: str, inputs: dict[str, str],
                   platforms: Sequence[str], precision: str = "float32") -> None:
    """Writes METADATA, describing an export of `fmt` with `inputs` (name -> `input_spec`) computing
    in `precision` (float32, or int8 for a quantized ONNX export), the model's face template, and
    the checksums of the files written before it."""
    spec = bundle.spec
    metadata = {"format": fmt, "class_names": list(spec.class_names), "image_size": spec.image_size,
                "inputs": inputs, "outputs": list(OUTPUTS), "platforms": list(platforms), "precision": precision,
                "face_template": dataclasses.asdict(spec.face_template) if spec.face_template else None,
                "sha256": {name: sha256(directory / name) for name in export_files(directory)}}
    (directory / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")


def export_files(directory: Path) -> list[str]:
    """The files of the export in `directory` but METADATA, as paths relative to it."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                  if path.is_file() and path.name != METADATA)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_export(directory: Path) -> dict[str, Any]:
    """The metadata of the export in `directory`, once each file it lists has the checksum it was
    written with; raises ExportError naming the file that is missing or damaged, or the metadata."""
    metadata_file = directory / METADATA
    try:
        metadata = json.loads(metadata_file.read_text())
        checksums = dict(metadata.get("sha256", {}))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ExportError(f"{metadata_file}: damaged ({type(e).__name__}: {e})") from e
    for name, expected in checksums.items():
        if not (directory / name).is_file():
            raise ExportError(f"{directory / name}: missing from the export; export the model again")
        if sha256(directory / name) != expected:
            raise ExportError(f"{directory / name}: damaged (its SHA-256 is not the one {METADATA} gives); "
                              "export the model again")
    return metadata


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
