"""Running an ONNX export (`python -m manet_jax.export --format onnx`) with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from manet_jax.bundle import ModelSpec
from manet_jax.errors import ManetError
from manet_jax.inference.predictor import OUTPUTS
from manet_jax.inference.stablehlo import METADATA

ONNX_FILE = "manet.onnx"


class OnnxRuntimeError(ManetError):
    """An ONNX export cannot be run."""


class OnnxPredictor:
    """`Predictor`'s interface (without attention maps) over ONNX Runtime on the CPU, all graph
    optimisations on; `threads` intra-op threads (default: ONNX Runtime's, one per core)."""

    def __init__(self, directory: Path, batch_size: int = 32, threads: int | None = None):
        try:
            import onnxruntime as ort  # only when used
        except ImportError as e:
            raise OnnxRuntimeError(f"ONNX Runtime is not installed ({e}): pip install -e '.[onnx]'") from e
        directory = Path(directory)
        metadata_file = directory / METADATA
        metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
        if metadata.get("format") != "onnx" or not (directory / ONNX_FILE).is_file():
            raise OnnxRuntimeError(f"--checkpoint {directory}: not an ONNX export (python -m manet_jax.export "
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
