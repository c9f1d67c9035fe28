"""Face detection with OpenCV's bundled frontal-face Haar cascade, and face crops with a margin."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import cv2
import numpy as np

CASCADE = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 1024  # the detector sees images downscaled to this longest side
MARGIN = 0.15  # fraction of the face box added on each side of a crop


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: top-left corner (x, y), width and height; and the face's five
    landmarks (`bundle.LANDMARKS`, (x, y) in the same pixels) where its detector gives them."""

    x: int
    y: int
    width: int
    height: int
    landmarks: tuple[tuple[float, float], ...] | None = dataclasses.field(default=None, compare=False)

    def scaled(self, factor: float) -> Box:
        """The box with every coordinate multiplied by `factor` (rounded; landmarks are not)."""
        landmarks = None if self.landmarks is None else tuple((x * factor, y * factor) for x, y in self.landmarks)
        return Box(*(round(v * factor) for v in (self.x, self.y, self.width, self.height)), landmarks)

    def expanded(self, margin: float, width: int, height: int) -> Box:
        """The box grown by `margin` times its size on each side, clipped to a width x height image."""
        dx, dy = round(margin * self.width), round(margin * self.height)
        x0, y0 = max(self.x - dx, 0), max(self.y - dy, 0)
        x1, y1 = min(self.x + self.width + dx, width), min(self.y + self.height + dy, height)
        return Box(x0, y0, x1 - x0, y1 - y0, self.landmarks)

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        """The part of an (H, W, ...) array inside the box."""
        return pixels[self.y:self.y + self.height, self.x:self.x + self.width]


@functools.cache
def _cascade() -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(str(CASCADE))
    if cascade.empty():
        raise RuntimeError(f"{CASCADE}: OpenCV cannot load this face cascade; reinstall opencv-python-headless<5")
    return cascade


def detect_faces(pixels: np.ndarray, min_neighbors: int = 5, max_side: int = DETECT_MAX_SIDE) -> list[Box]:
    """Frontal faces in an (H, W, 3) uint8 RGB image, in its pixel coordinates, left to right.

    The cascade runs on the histogram-equalised grey image, downscaled to at most `max_side`;
    faces smaller than 24 pixels there are missed. More `min_neighbors` means fewer false positives.
    """
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, max_side / max(grey.shape))
    if scale < 1.0:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    found = _cascade().detectMultiScale(cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=min_neighbors,
                                        minSize=(24, 24))
    return sorted((Box(*map(int, box)).scaled(1.0 / scale) for box in found), key=lambda b: (b.x, b.y))
