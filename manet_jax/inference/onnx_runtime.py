"""Running an ONNX export (`python -m manet_jax.export --format onnx`) with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from manet_jax.bundle import ModelSpec
from manet_jax.errors import ManetError
from manet_jax.inference.predictor import OUTPUTS
from manet_jax.inference.stablehlo import METADATA, check_export

ONNX_FILE = "manet.onnx"


class OnnxRuntimeError(ManetError):
    """An ONNX export cannot be run."""


def read_metadata(directory: Path) -> dict:
    """The metadata of the ONNX export in `directory`."""
    metadata_file = directory / METADATA
    if not (directory / ONNX_FILE).is_file() or not metadata_file.is_file():
        raise OnnxRuntimeError(f"--checkpoint {directory}: not an ONNX export (python -m manet_jax.export "
                               f"--format onnx makes one)")
    metadata = check_export(directory)
    try:
        if metadata["format"] != "onnx":
            raise OnnxRuntimeError(f"--checkpoint {directory}: a {metadata['format']} export, not an ONNX one "
                                   f"(python -m manet_jax.export --format onnx makes one)")
        return metadata
    except (ValueError, KeyError, TypeError) as e:
        raise OnnxRuntimeError(f"{metadata_file}: damaged ({type(e).__name__}: {e})") from e


def read_spec(directory: Path) -> ModelSpec:
    """The classes, input size and face template of the ONNX export in `directory`, from its metadata."""
    metadata = read_metadata(directory)
    try:
        return ModelSpec(metadata["class_names"], metadata["image_size"], face_template=metadata.get("face_template"))
    except (ValueError, KeyError, TypeError, ManetError) as e:  # ManetError: a bad template or class list
        raise OnnxRuntimeError(f"{directory / METADATA}: damaged ({type(e).__name__}: {e})") from e


class OnnxPredictor:
    """`Predictor`'s interface (without attention maps) over ONNX Runtime on the CPU, all graph
    optimisations on; `threads` intra-op threads (default: ONNX Runtime's, one per core).
    `precision` is the export's: float32, or int8 for a quantized one."""

    def __init__(self, directory: Path, batch_size: int = 32, threads: int | None = None):
        try:
            import onnxruntime as ort  # only when used
        except ImportError as e:
            raise OnnxRuntimeError(f"ONNX Runtime is not installed ({e}): pip install -e '.[onnx]'") from e
        directory = Path(directory)
        self.spec = read_spec(directory)
        self.precision = read_metadata(directory).get("precision", "float32")
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(directory / ONNX_FILE), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own exception types are not part of its public API
            raise OnnxRuntimeError(f"{directory / ONNX_FILE}: ONNX Runtime cannot load it "
                                   f"({str(e).strip().splitlines()[0]})") from e

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """OUTPUTS for (N, S, S, 3) float32 images in [0, 1]."""
        results = [self._session.run(list(OUTPUTS), {"images": images[start:start + self.batch_size]})
                   for start in range(0, len(images), self.batch_size)]
        return {key: np.concatenate([r[i] for r in results]) for i, key in enumerate(OUTPUTS)}
