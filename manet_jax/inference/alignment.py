"""Faces placed as the model's training data placed them: each face's five landmarks taken onto the
model's face template by a similarity transform (rotation, uniform scale, translation), fitted with
OpenCV's `estimateAffinePartial2D`, and the photo warped by it to the model's input."""

from __future__ import annotations

import sys

import cv2
import numpy as np

from manet_jax.bundle import FaceTemplate, ModelSpec
from manet_jax.errors import ManetError
from manet_jax.inference.faces import Box

# InsightFace's five-point template of its 112x112 ArcFace crops, in the order of LANDMARKS
ARCFACE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))
DEFAULT_TEMPLATE = FaceTemplate(tuple((x / 112, y / 112) for x, y in ARCFACE_112),
                                "the default: InsightFace's ArcFace template (112x112) scaled to the model's input")
_ALL_INLIERS = 1e9  # a RANSAC threshold that keeps all five points: the fit is least squares over them
_LEAST_SCALE = 0.5  # a warp shrinking more than this is preceded by an area downscale (no aliasing)


class AlignmentError(ManetError):
    """--align asked for where there are no landmarks to align by."""


def similarity(landmarks: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix that takes the (5, 2) `landmarks` closest to the (5, 2) `points`
    (least squares: all five count, refined by Levenberg-Marquardt)."""
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float64), np.asarray(points, np.float64),
                                            ransacReprojThreshold=_ALL_INLIERS)
    return matrix


def align_face(pixels: np.ndarray, landmarks: np.ndarray, template: FaceTemplate, size: int) -> np.ndarray:
    """The size x size uint8 crop of an (H, W, 3) image in which the face with `landmarks` (pixels)
    lies on `template` (bilinear; outside the image is black)."""
    matrix = similarity(landmarks, np.asarray(template.points) * size)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < _LEAST_SCALE:  # bilinear warps alias when they shrink; shrink by area first
        factor = scale / _LEAST_SCALE
        pixels = cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        matrix = np.concatenate([matrix[:, :2] / factor, matrix[:, 2:]], axis=1)
    return cv2.warpAffine(pixels, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def face_crop(pixels: np.ndarray, box: Box, template: FaceTemplate | None, size: int) -> np.ndarray:
    """The uint8 crop of one face that the model sees: aligned onto `template` where there is one
    and the box has landmarks, else the box itself."""
    if template is not None and box.landmarks is not None:
        return align_face(pixels, np.asarray(box.landmarks), template, size)
    return box.crop(pixels)


def choose_template(align: bool | None, landmarks: bool, spec: ModelSpec) -> FaceTemplate | None:
    """The template faces are aligned to (None: box crops) for --align (True), --no-align (False) or
    neither (None: align where there are `landmarks` and `spec` has a template). --align on a model
    without a template aligns to DEFAULT_TEMPLATE and says so; without landmarks it is an error."""
    if align is False or (align is None and (not landmarks or spec.face_template is None)):
        return None
    if not landmarks:
        raise AlignmentError("--align: the faces have no landmarks to align by; use --detector mtcnn "
                             "(or --boxes with landmarks)")
    if spec.face_template is None:
        print(f"--align: the model carries no face template; aligning to {DEFAULT_TEMPLATE.describe(spec.image_size)}",
              file=sys.stderr)
        return DEFAULT_TEMPLATE
    print(f"aligning faces to the model's template: {spec.face_template.describe(spec.image_size)}", file=sys.stderr)
    return spec.face_template


def measure_template(faces: list[np.ndarray], images: int, source: str) -> FaceTemplate:
    """The template of `faces` ((5, 2) landmarks each, as fractions of their image's width and
    height) found in `images` images: each landmark's median, and its median absolute deviation as
    the spread."""
    if not faces:
        raise AlignmentError(f"{source}: no face found in {images} image(s); no template to measure")
    stacked = np.stack(faces)
    points = np.median(stacked, axis=0)
    return FaceTemplate(points, source, len(faces), images, np.median(np.abs(stacked - points), axis=0))
