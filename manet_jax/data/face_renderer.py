"""Draws cartoon faces showing MA-Net's first seven expressions (the `synthetic_faces` dataset).

Each expression has its own eye openness, brow shape, mouth shape and skin folds (`EXPRESSIONS`),
so that most parts of the face show it; every image varies identity (face shape, skin, hair, eye
spacing), pose (rotation, translation, scale), background clutter, lighting and sensor noise.
Rendering is deterministic in the seed.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageDraw

from manet_jax.data.labels import CANONICAL_CLASSES

SUPERSAMPLE = 2  # shapes are drawn at this multiple of the output size, then box-filtered down


@dataclasses.dataclass(frozen=True)
class Expression:
    """Shape parameters of one expression in face units (1 = half the face width, y down)."""

    eye_open: float  # eye height / eye width
    brow_inner: float  # height of the brow's inner end above the eye
    brow_outer: float  # height of the brow's outer end above the eye
    mouth: str  # one of the `_mouth_*` shapes below
    mouth_width: float  # half width of the mouth
    lines: str  # skin folds, one of the `_lines_*` below, so upper-face crops carry the class too


EXPRESSIONS: dict[str, Expression] = {
    "Neutral": Expression(0.55, 0.16, 0.16, "line", 0.30, "none"),
    "Happiness": Expression(0.35, 0.20, 0.18, "smile", 0.38, "cheeks"),
    "Sadness": Expression(0.40, 0.30, 0.08, "frown", 0.30, "inner_forehead"),
    "Surprise": Expression(1.00, 0.36, 0.34, "oval", 0.16, "forehead"),
    "Fear": Expression(0.90, 0.34, 0.18, "wide", 0.40, "forehead"),
    "Disgust": Expression(0.28, 0.08, 0.14, "sneer", 0.30, "nose"),
    "Anger": Expression(0.50, 0.00, 0.24, "clench", 0.32, "glabella"),
}
CLASSES: tuple[str, ...] = CANONICAL_CLASSES[:7]

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96],
                  [141, 85, 60], [96, 60, 40]], np.float64)
_DARK = (40, 20, 20)
_TEETH = (245, 245, 235)


def render_face(expression: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One `size` x `size` RGB uint8 face showing CLASSES[expression], randomised by `rng`."""
    expr = EXPRESSIONS[CLASSES[expression]]
    canvas = size * SUPERSAMPLE
    image = _background(canvas, rng)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 3)):  # background clutter
        x, y = rng.uniform(0, canvas, 2)
        r = rng.uniform(0.05, 0.2) * canvas
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))

    scale = rng.uniform(0.24, 0.33) * canvas  # face half width in pixels
    angle = np.deg2rad(rng.uniform(-15, 15))
    centre = canvas / 2 + rng.uniform(-0.08, 0.08, 2) * canvas
    mirror = rng.choice([-1.0, 1.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def to_px(points: np.ndarray) -> list[tuple[float, float]]:
        points = np.asarray(points, np.float64) * [mirror, 1.0]
        return [tuple(p) for p in (points @ rotation.T) * scale + centre]

    aspect = rng.uniform(1.15, 1.35)
    skin = tuple(int(c) for c in np.clip(
        _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 12, 3), 0, 255))
    hair = _ellipse(0, -0.25, 1.08, aspect * 0.95)
    draw.polygon(to_px(hair), fill=_colour(rng, dark=True))
    draw.polygon(to_px(_ellipse(0, 0, 1, aspect)), fill=skin)

    eye_dx, eye_y = rng.uniform(0.34, 0.44), rng.uniform(-0.25, -0.12)
    eye_w = rng.uniform(0.15, 0.2)
    eye_open = expr.eye_open * rng.uniform(0.85, 1.15)
    brow_w = eye_w * rng.uniform(1.1, 1.4)
    brow_t = rng.uniform(0.05, 0.08)
    jitter = rng.normal(0, 0.02, 2)
    for side in (-1, 1):
        ex = side * eye_dx
        draw.polygon(to_px(_ellipse(ex, eye_y, eye_w, eye_w * eye_open)), fill=(250, 250, 250))
        pupil = min(eye_w * 0.55, eye_w * eye_open * 0.9)
        draw.polygon(to_px(_ellipse(ex, eye_y, pupil, pupil)), fill=_DARK)
        lid = eye_y - eye_w * eye_open
        inner = np.array([ex - side * brow_w * 0.9, lid - expr.brow_inner - jitter[0]])
        outer = np.array([ex + side * brow_w, lid - expr.brow_outer - jitter[1]])
        draw.polygon(to_px(_band(np.stack([inner, outer]), brow_t)), fill=_DARK)

    nose_y = rng.uniform(0.12, 0.2)
    nose = np.array([[0, eye_y + 0.1], [0.06, nose_y], [-0.04, nose_y + 0.03]])
    draw.polygon(to_px(_band(nose, 0.03)), fill=tuple(int(c * 0.75) for c in skin))
    fold = tuple(int(c * 0.6) for c in skin)
    for line in _LINES[expr.lines](eye_y, eye_dx, nose_y, rng):
        draw.polygon(to_px(_band(line, 0.025)), fill=fold)
    mouth_y = nose_y + rng.uniform(0.25, 0.35)
    _MOUTHS[expr.mouth](draw, to_px, mouth_y, expr.mouth_width * rng.uniform(0.85, 1.15), rng)

    pixels = np.asarray(image.resize((size, size), Image.Resampling.BOX), np.float32)
    light = _gradient(size, rng, rng.uniform(0.7, 1.15), rng.uniform(0.85, 1.2))
    noise = rng.standard_normal(pixels.shape, np.float32) * rng.uniform(2, 10)
    pixels = pixels * light[..., None] + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _mouth_line(draw, to_px, y, w, rng):
    curve = rng.uniform(-0.02, 0.02)
    draw.polygon(to_px(_band(_arc(y, w, curve), 0.05)), fill=_DARK)


def _mouth_smile(draw, to_px, y, w, rng):
    depth = rng.uniform(0.12, 0.2)
    if rng.random() < 0.5:  # closed smile
        draw.polygon(to_px(_band(_arc(y, w, depth), 0.06)), fill=_DARK)
        return
    upper, lower = _arc(y, w, depth * 0.4), _arc(y, w, depth * 1.4)[::-1]
    draw.polygon(to_px(np.concatenate([upper, lower])), fill=_DARK)
    teeth = np.concatenate([upper, _arc(y + 0.04, w * 0.9, depth * 0.5)[::-1]])
    draw.polygon(to_px(teeth), fill=_TEETH)


def _mouth_frown(draw, to_px, y, w, rng):
    draw.polygon(to_px(_band(_arc(y, w, -rng.uniform(0.1, 0.18)), 0.06)), fill=_DARK)


def _mouth_oval(draw, to_px, y, w, rng):
    draw.polygon(to_px(_ellipse(0, y, w, w * rng.uniform(1.3, 1.8))), fill=_DARK)


def _mouth_wide(draw, to_px, y, w, rng):
    h = rng.uniform(0.08, 0.13)
    upper = _arc(y - h, w, -0.04)
    lower = _arc(y + h, w * 0.85, -0.06)[::-1]
    draw.polygon(to_px(np.concatenate([upper, lower])), fill=_DARK)
    draw.polygon(to_px(_band(_arc(y - h + 0.03, w * 0.8, -0.03), 0.04)), fill=_TEETH)


def _mouth_sneer(draw, to_px, y, w, rng):
    x = np.linspace(-w, w, 12)
    lift = rng.uniform(0.1, 0.16)
    line = np.stack([x, y - lift * np.clip(x / w, 0, 1) ** 2 + 0.03 * np.sin(5 * x / w)], 1)
    draw.polygon(to_px(_band(line, 0.06)), fill=_DARK)
    draw.polygon(to_px(_ellipse(w * 0.55, y - lift * 0.45, w * 0.25, 0.05)), fill=_DARK)


def _mouth_clench(draw, to_px, y, w, rng):
    h = rng.uniform(0.06, 0.09)
    draw.polygon(to_px([[-w, y - h], [w, y - h], [w, y + h], [-w, y + h]]), fill=_DARK)
    draw.polygon(to_px([[-w + 0.03, y - h + 0.03], [w - 0.03, y - h + 0.03],
                        [w - 0.03, y + h - 0.03], [-w + 0.03, y + h - 0.03]]), fill=_TEETH)
    for x in np.linspace(-w, w, 6)[1:-1]:
        draw.polygon(to_px(_band(np.array([[x, y - h], [x, y + h]]), 0.015)), fill=_DARK)


def _lines_none(eye_y, eye_dx, nose_y, rng):
    return []


def _lines_cheeks(eye_y, eye_dx, nose_y, rng):
    """Raised cheeks: a crease arcing under each eye."""
    t = np.linspace(-1, 1, 6)
    return [np.stack([side * eye_dx + 0.12 * t, eye_y + 0.2 - 0.05 * (1 - t ** 2)], 1)
            for side in (-1, 1)]


def _lines_forehead(eye_y, eye_dx, nose_y, rng):
    """Raised brows: long horizontal forehead lines."""
    top = eye_y - rng.uniform(0.5, 0.58)
    return [_arc(top - 0.09 * k, 0.45, -0.04) for k in range(3)]


def _lines_inner_forehead(eye_y, eye_dx, nose_y, rng):
    """Inner brows raised: short lines above the nose."""
    top = eye_y - rng.uniform(0.48, 0.55)
    return [_arc(top - 0.08 * k, 0.18, 0.03) for k in range(2)]


def _lines_glabella(eye_y, eye_dx, nose_y, rng):
    """Lowered, drawn-together brows: vertical folds between them."""
    return [np.array([[x, eye_y - 0.32], [x * 0.7, eye_y - 0.12]]) for x in (-0.07, 0.07)]


def _lines_nose(eye_y, eye_dx, nose_y, rng):
    """Nose wrinkles."""
    return [np.array([[side * 0.1, nose_y - 0.12], [side * 0.16, nose_y - 0.04]])
            for side in (-1, 1)]


_LINES = {"none": _lines_none, "cheeks": _lines_cheeks, "forehead": _lines_forehead,
          "inner_forehead": _lines_inner_forehead, "glabella": _lines_glabella, "nose": _lines_nose}

_MOUTHS = {"line": _mouth_line, "smile": _mouth_smile, "frown": _mouth_frown, "oval": _mouth_oval,
           "wide": _mouth_wide, "sneer": _mouth_sneer, "clench": _mouth_clench}


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _arc(y: float, w: float, depth: float, n: int = 12) -> np.ndarray:
    """A parabola through (+-w, y) whose middle sits `depth` lower (corners up when depth > 0)."""
    x = np.linspace(-w, w, n)
    return np.stack([x, y + depth * (1 - (x / w) ** 2)], 1)


def _band(line: np.ndarray, thickness: float) -> np.ndarray:
    """A polygon of `thickness` around the polyline `line` (k, 2)."""
    tangent = np.gradient(line, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    offset = normal * thickness / 2
    return np.concatenate([line + offset, (line - offset)[::-1]])


def _colour(rng: np.random.Generator, dark: bool = False) -> tuple[int, int, int]:
    top = 110 if dark else 256
    return tuple(int(c) for c in rng.integers(0, top, 3))


@functools.lru_cache(maxsize=8)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    return xx, yy


def _gradient(size: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A linear ramp from `low` to `high` across the image in a random direction."""
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    xx, yy = _unit_grid(size)
    t = (xx * direction[0] + yy * direction[1]) / np.sqrt(0.5) + 0.5
    return low + (high - low) * t


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A two-colour linear gradient (computed at 16 px, then upsampled)."""
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = _gradient(16, rng, 0.0, 1.0)[..., None]
    small = Image.fromarray(np.clip(a + (b - a) * t, 0, 255).astype(np.uint8))
    return small.resize((size, size), Image.Resampling.BILINEAR)
