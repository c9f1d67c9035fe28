"""Exporting a model as ONNX through jax2onnx, and running the export with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jax.extend.core import jaxpr_as_fun

from manet_jax.bundle import Bundle, ModelSpec
from manet_jax.errors import ManetError
from manet_jax.inference.predictor import OUTPUTS
from manet_jax.inference.stablehlo import METADATA, input_spec, serving_fn, write_metadata

ONNX_FILE = "manet.onnx"
# Below this input size some local-branch maps are smaller than a kernel and their convolutions
# become padded matrix products (models/layers.py); jax2onnx cannot lower a padding of a
# symbolic batch.
MIN_IMAGE_SIZE = 224


class OnnxExportError(ManetError):
    """The model cannot be exported as ONNX."""


def export_onnx(bundle: Bundle, directory: Path) -> Path:
    """Writes `manet.onnx`: input `images` float32 (batch, S, S, 3) RGB in [0, 1], the batch size
    dynamic -> the OUTPUTS in their order, float32 (batch, classes), with the variables as
    initializers.

    jax2onnx converts the jaxpr of `serving_fn`, the computation every export serves, rather than
    tracing the Flax module itself: while it traces it replaces some Flax and jax.numpy functions
    with versions that do not take `nn.vmap` (the local branches) or positional pooling windows.
    """
    try:
        from jax2onnx import to_onnx  # only when exporting
    except ImportError as e:
        raise OnnxExportError(f"--format onnx needs jax2onnx ({e}): pip install -e '.[onnx]' && "
                              "pip install --no-deps jax2onnx==0.17.1") from e
    size = bundle.spec.image_size
    if size < MIN_IMAGE_SIZE:
        raise OnnxExportError(f"--image-size {size}: an ONNX export needs at least {MIN_IMAGE_SIZE}")
    batch, = jax_export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    serve, variables = serving_fn(bundle), bundle.variables
    jaxpr = jax.make_jaxpr(lambda x: [serve(variables, x)[key] for key in OUTPUTS])(images)
    path = directory / ONNX_FILE
    to_onnx(jaxpr_as_fun(jaxpr), [images], model_name="manet", input_names=["images"], output_names=list(OUTPUTS),
            return_mode="file", output_path=str(path))
    write_metadata(directory, bundle, "onnx", {"images": input_spec(bundle, "float32")}, ["onnx"])
    return path


class OnnxPredictor:
    """Runs an ONNX export with ONNX Runtime on the CPU: `Predictor`'s interface (no MAPS)."""

    def __init__(self, directory: Path, batch_size: int = 32, threads: int | None = None):
        try:
            import onnxruntime as ort  # only when used
        except ImportError as e:
            raise OnnxExportError(f"ONNX Runtime is not installed ({e}): pip install -e '.[onnx]'") from e

        metadata = json.loads((directory / METADATA).read_text()) if (directory / METADATA).is_file() else {}
        if metadata.get("format") != "onnx":
            raise OnnxExportError(f"--checkpoint {directory}: not an ONNX export (python -m manet_jax.export "
                                  f"--format onnx makes one)")
        self.spec = ModelSpec(metadata["class_names"], metadata["image_size"])
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(directory / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """OUTPUTS for (N, S, S, 3) float32 images in [0, 1]."""
        results = [self._session.run(list(OUTPUTS), {"images": images[start:start + self.batch_size]})
                   for start in range(0, len(images), self.batch_size)]
        return {key: np.concatenate([r[i] for r in results]) for i, key in enumerate(OUTPUTS)}
