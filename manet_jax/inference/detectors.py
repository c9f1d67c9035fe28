"""Face detectors by name (`predict --detector`): OpenCV's cascade, which needs nothing more, and
MTCNN (the `mtcnn` package, TensorFlow, its weights inside the wheel), imported only when chosen."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from manet_jax.errors import ManetError
from manet_jax.inference.faces import Box, detect_faces

Detector = Callable[[np.ndarray], list[Box]]
MTCNN_MIN_CONFIDENCE = 0.9  # MTCNN faces below this confidence are dropped (benchmarks: detectors)


class DetectorError(ManetError):
    """A detector that is unknown or whose package is not installed."""


@functools.cache
def _mtcnn():
    try:
        from mtcnn import MTCNN
    except ImportError as e:
        raise DetectorError(f"--detector mtcnn: the mtcnn package is missing ({e}); "
                            "pip install 'manet-jax[mtcnn]'") from None
    return MTCNN(device="CPU:0")


def detect_mtcnn(pixels: np.ndarray, min_confidence: float = MTCNN_MIN_CONFIDENCE) -> list[Box]:
    """Faces in an (H, W, 3) uint8 RGB image found by MTCNN, in its pixel coordinates, left to right,
    each with its five landmarks (`bundle.LANDMARKS`, unrounded)."""
    # rows of image, x, y, width, height, confidence, the landmarks' five x then their five y
    found = _mtcnn().detect_faces(pixels, output_type="numpy", box_format="xywh")
    boxes = (Box(*(int(v) for v in np.round(row[1:5])), tuple(zip(row[6:11].tolist(), row[11:16].tolist())))
             for row in found if row[5] >= min_confidence)
    return sorted((box for box in boxes if box.width > 0 and box.height > 0), key=lambda b: (b.x, b.y))


DETECTORS = ("cascade", "mtcnn")
LANDMARK_DETECTORS = ("mtcnn",)  # those whose faces come with landmarks


def get_detector(name: str, min_neighbors: int = 5) -> Detector:
    """The detector called `name`; `min_neighbors` is the cascade's strictness. Raises DetectorError
    for an unknown name or, for MTCNN, when its package is missing (checked here, not per image)."""
    if name == "cascade":
        return functools.partial(detect_faces, min_neighbors=min_neighbors)
    if name == "mtcnn":
        _mtcnn()
        return detect_mtcnn
    raise DetectorError(f"--detector {name}: unknown; choose one of {', '.join(DETECTORS)}")
