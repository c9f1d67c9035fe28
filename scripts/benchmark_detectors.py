"""Measures predict's face detectors on scikit-image's photos: recall, false faces and time per image.

Run from the repository root (needs scikit-image, and mtcnn for that detector):
        python scripts/benchmark_detectors.py --output docs/benchmarks/detectors_<date>.json
The set: the two photos with a face (astronaut, camera; boxes labelled by hand), each also rotated
by 15, 30 and 45 degrees, scaled by 0.5 and 2 and cropped to 2x and 1.3x its face box, the two
side by side, and scikit-image's photos without a face. A detection is a found face if its IoU
with a labelled face is at least 0.5 (each face and detection counted once); every other one is
a false face. Times are medians of --repeats runs per image: wall time, and CPU time (the
process's, all threads), which other work on a shared machine disturbs less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from manet_jax.inference.detectors import MTCNN_MIN_CONFIDENCE
from manet_jax.inference.faces import Box, detect_faces

DATA = Path(skimage.__file__).parent / "data"
FACES = {"astronaut.png": [Box(180, 64, 88, 100)], "camera.png": [Box(196, 114, 60, 82)]}
NO_FACES = ("brick.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png", "coins.png", "color.png",
            "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "moon.png",
            "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png")


def load(name: str) -> Image.Image:
    return Image.open(DATA / name).convert("RGB")


def rotated(image: Image.Image, boxes: list[Box], degrees: float) -> tuple[Image.Image, list[Box]]:
    """The image turned anticlockwise (grown to fit, black corners); each box keeps its size, centred
    on where its centre went."""
    out = image.rotate(degrees, resample=Image.BILINEAR, expand=True)
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    moved = []
    for b in boxes:
        dx, dy = b.x + b.width / 2 - image.width / 2, b.y + b.height / 2 - image.height / 2
        cx, cy = out.width / 2 + c * dx + s * dy, out.height / 2 - s * dx + c * dy
        moved.append(Box(round(cx - b.width / 2), round(cy - b.height / 2), b.width, b.height))
    return out, moved


def cropped(image: Image.Image, boxes: list[Box], factor: float) -> tuple[Image.Image, list[Box]]:
    """A square crop `factor` times the first face box's size, centred on it."""
    b = boxes[0]
    side = round(factor * max(b.width, b.height))
    x0, y0 = b.x + b.width // 2 - side // 2, b.y + b.height // 2 - side // 2
    return image.crop((x0, y0, x0 + side, y0 + side)), [Box(b.x - x0, b.y - y0, b.width, b.height)]


def photo_set() -> list[tuple[str, np.ndarray, list[Box]]]:
    """(name, RGB pixels, labelled faces) for every test image."""
    cases = []
    for name, boxes in FACES.items():
        image = load(name)
        cases.append((name, image, boxes))
        for degrees in (15, 30, 45):
            cases.append((f"{name} rotated {degrees}", *rotated(image, boxes, degrees)))
        for factor in (0.5, 2):
            size = (round(image.width * factor), round(image.height * factor))
            cases.append((f"{name} scaled {factor}", image.resize(size, Image.BILINEAR),
                          [b.scaled(factor) for b in boxes]))
        for factor in (2, 1.3):
            cases.append((f"{name} cropped {factor}x face", *cropped(image, boxes, factor)))
    pair = Image.new("RGB", (1024, 512))
    pair.paste(load("astronaut.png"), (0, 0))
    pair.paste(load("camera.png"), (512, 0))
    cases.append(("astronaut.png + camera.png", pair,
                  FACES["astronaut.png"] + [Box(b.x + 512, b.y, b.width, b.height) for b in FACES["camera.png"]]))
    cases += [(name, load(name), []) for name in NO_FACES]
    return [(name, np.asarray(image), boxes) for name, image, boxes in cases]


def iou(a: Box, b: Box) -> float:
    w = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    h = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    inter = max(w, 0) * max(h, 0)
    return inter / (a.width * a.height + b.width * b.height - inter)


def score(found: list[Box], faces: list[Box]) -> int:
    """How many labelled faces a detection matches (IoU >= 0.5, greedy by IoU, one-to-one)."""
    pairs = sorted(((iou(f, d), i, j) for i, f in enumerate(faces) for j, d in enumerate(found)), reverse=True)
    used_faces, used_found = set(), set()
    for overlap, i, j in pairs:
        if overlap >= 0.5 and i not in used_faces and j not in used_found:
            used_faces.add(i)
            used_found.add(j)
    return len(used_faces)


def run_mtcnn(detector, pixels: np.ndarray) -> list[tuple[Box, float]]:
    found = detector.detect_faces(pixels)
    return [(Box(*map(int, f["box"])), f["confidence"]) for f in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per image; the median counts")
    args = parser.parse_args()
    from mtcnn import MTCNN
    mtcnn = MTCNN(device="CPU:0")
    cases = photo_set()
    variants = {
        "cascade (min_neighbors 5)": lambda p: [(b, 1.0) for b in detect_faces(p, min_neighbors=5)],
        "cascade (min_neighbors 3)": lambda p: [(b, 1.0) for b in detect_faces(p, min_neighbors=3)],
        "mtcnn": lambda p: run_mtcnn(mtcnn, p),
    }
    for _, pixels, _ in cases[:2]:  # warm-up (TensorFlow traces its functions on first calls)
        for detect in variants.values():
            detect(pixels)
    rows = []
    for name, pixels, faces in cases:
        print(name, flush=True)
        for variant, detect in variants.items():
            times, cpu_times = [], []
            for _ in range(args.repeats):
                start, cpu_start = time.perf_counter(), time.process_time()
                found = detect(pixels)
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
            thresholds = [MTCNN_MIN_CONFIDENCE, 0.0] if variant == "mtcnn" else [0.0]
            for threshold in thresholds:
                kept = [b for b, c in found if c >= threshold]
                label = (variant if variant != "mtcnn" else f"mtcnn (confidence >= {threshold})" if threshold
                         else "mtcnn (its own thresholds)")
                matched = score(kept, faces)
                rows.append({"image": name, "size": list(pixels.shape[:2]), "detector": label,
                             "faces": len(faces), "found": matched, "false": len(kept) - matched,
                             "ms": 1000 * float(np.median(times)), "cpu_ms": 1000 * float(np.median(cpu_times)),
                             "boxes": [[b.x, b.y, b.width, b.height] for b in kept]})
    summary = {}
    for label in dict.fromkeys(r["detector"] for r in rows):
        mine = [r for r in rows if r["detector"] == label]
        summary[label] = {"recall": sum(r["found"] for r in mine) / sum(r["faces"] for r in mine),
                          "faces_found": sum(r["found"] for r in mine), "faces": sum(r["faces"] for r in mine),
                          "false_faces": sum(r["false"] for r in mine),
                          "false_faces_on_images_without_a_face": sum(r["false"] for r in mine if not r["faces"]),
                          "median_ms": float(np.median([r["ms"] for r in mine])),
                          "median_cpu_ms": float(np.median([r["cpu_ms"] for r in mine])),
                          "mean_cpu_ms": float(np.mean([r["cpu_ms"] for r in mine]))}
        print(label, summary[label], flush=True)
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_average_at_end": os.getloadavg(), "repeats": args.repeats,
           **{name: version(name) for name in ("opencv-python-headless", "mtcnn", "tensorflow-cpu", "scikit-image")}}
    args.output.write_text(json.dumps({"environment": env, "summary": summary, "images": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
