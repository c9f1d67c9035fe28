"""Tiny datasets in each dataset's real on-disk layout, for the data tests.

Every maker writes real JPEG/PNG files and label files in the distributed format into `root`
and returns what the built dataset must contain: {split: {file_name: (canonical label, pixels)}}.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from manet_jax.data.builder_base import FILE_NAME, IMAGE, LABEL
from manet_jax.data.registry import make_builder

Expected = dict[str, dict[str, tuple[int, np.ndarray]]]

# Canonical index of each class folder name used below.
CANONICAL = {"Neutral": 0, "Happiness": 1, "Sadness": 2, "Surprise": 3, "Fear": 4, "Disgust": 5,
             "Anger": 6, "Contempt": 7}


def pixels(rng: np.random.Generator, height: int, width: int, grey: bool = False) -> np.ndarray:
    """A smooth random image (compresses like a photo)."""
    small = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image.convert("L") if grey else image)


def save(path: Path, array: np.ndarray, quality: int = 90) -> np.ndarray:
    """Writes `array` as JPEG or PNG (by suffix); returns the pixels a PIL reader gets back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=quality)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict]:
    """All examples of `split` in stored order, with the image left encoded."""
    source = builder.as_data_source(split, decoders={IMAGE: tfds.decode.SkipDecoding()})
    return [{IMAGE: ex[IMAGE], LABEL: int(ex[LABEL]), FILE_NAME: ex[FILE_NAME].decode()}
            for ex in (source[i] for i in range(len(source)))]


def build(name: str, data_dir: Path, manual_dir: Path | None, **kwargs) -> tfds.core.DatasetBuilder:
    builder = make_builder(name, data_dir, **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(manual_dir), try_download_gcs=False))
    return builder


def make_class_folders(root: Path, splits: dict[str, str], folders: dict[str, int], suffix: str,
                       per_class: dict[str, int], seed: int = 0, size: tuple[int, int] = (20, 16)
                       ) -> Expected:
    """ImageFolder-style `root/<splits[split]>/<folder>/NNNN<suffix>` files."""
    rng = np.random.default_rng(seed)
    expected: Expected = {}
    for split, split_dir in splits.items():
        expected[split] = {}
        for folder, label in folders.items():
            for i in range(per_class[split]):
                rel = f"{split_dir}/{folder}/{i:04d}{suffix}"
                expected[split][rel] = (label, save(root / rel, pixels(rng, *size)))
    return expected


# FED-RO's class folders as distributed (neutral spelt "neural") -> canonical labels.
FED_RO_FOLDERS = {"anger": 6, "disgust": 5, "fear": 4, "happy": 1, "neural": 0, "sad": 2, "surprise": 3}

RAF_CODES = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger",
             7: "Neutral"}


def make_raf_db(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Expected:
    """basic/EmoLabel/list_patition_label.txt + basic/Image/aligned/<name>_aligned.jpg (100x100)."""
    per_class = per_class or {"train": 2, "test": 2}
    rng = np.random.default_rng(seed)
    lines, expected = [], {"train": {}, "test": {}}
    for split, n in per_class.items():
        number = 0
        for code in RAF_CODES:
            for _ in range(n):
                number += 1
                name = f"{split}_{number:05d}" if split == "train" else f"{split}_{number:04d}"
                rel = f"Image/aligned/{name}_aligned.jpg"
                expected[split][rel] = (CANONICAL[RAF_CODES[code]],
                                        save(root / "basic" / rel, pixels(rng, 100, 100)))
                lines.append(f"{name}.jpg {code}")
    (root / "basic/EmoLabel").mkdir(parents=True)
    (root / "basic/EmoLabel/list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return expected


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]


def make_affectnet_original(root: Path, seed: int = 0) -> dict[str, list[dict]]:
    """Manually_Annotated_file_lists/{training,validation}.csv (validation without a header, as
    some copies are) + Manually_Annotated_Images/<subdir>/<file>.jpg, codes 0-10 twice each.
    Returns per split the rows: file name, code and the expected face crop."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for split, csv_name in (("train", "training.csv"), ("test", "validation.csv")):
        lines = [AFFECTNET_HEADER] if split == "train" else []
        for code in range(11):
            for i in range(2):
                name = f"{code + 100 * (split == 'test')}/{split}{code:02d}{i}.jpg"
                full = save(root / "Manually_Annotated_Images" / name, pixels(rng, 60, 80))
                x, y, w, h = 10 + i, 5, 40, 30 + 10 * i
                if i == 1:
                    w = 100  # box reaches past the right edge: clipped to the image
                lines.append([name, x, y, w, h, ";".join(["1.5"] * 136), code, 0.1, -0.2])
                rows[split].append({"name": name, "code": code,
                                    "crop": full[y:y + h, x:min(x + w, 80)]})
        (root / "Manually_Annotated_file_lists").mkdir(parents=True, exist_ok=True)
        with open(root / "Manually_Annotated_file_lists" / csv_name, "w", newline="") as f:
            csv.writer(f).writerows(lines)
    return rows


def make_affectnet_newer(root: Path, seed: int = 0) -> dict[str, dict[str, tuple[int, np.ndarray]]]:
    """{train,val}_set/images/<id>.jpg + annotations/<id>_exp.npy (a string code, as shipped),
    codes 0-7 twice each. Returns {split: {file_name: (code, pixels)}}."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for split, folder in (("train", "train_set"), ("test", "val_set")):
        out[split] = {}
        (root / folder / "annotations").mkdir(parents=True)
        for code in range(8):
            for i in range(2):
                image_id = f"{code * 10 + i + 1}"
                rel = f"{folder}/images/{image_id}.jpg"
                out[split][rel] = (code, save(root / rel, pixels(rng, 32, 32)))
                np.save(root / folder / "annotations" / f"{image_id}_exp.npy", np.array(str(code)))
                np.save(root / folder / "annotations" / f"{image_id}_val.npy", np.array("0.5"))
    return out


FERPLUS_COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF"]


def make_fer2013(root: Path, rows: list[tuple[str, int | str]], seed: int = 0) -> list[np.ndarray]:
    """fer2013/fer2013.csv with one row per (usage, emotion code). Returns the 48x48 greyscale
    images in row order."""
    rng = np.random.default_rng(seed)
    images = [pixels(rng, 48, 48, grey=True) for _ in rows]
    (root / "fer2013").mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013" / "fer2013.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for (usage, emotion), image in zip(rows, images):
            writer.writerow([emotion, " ".join(str(v) for v in image.ravel()), usage])
    return images


def make_ferplus(root: Path, rows: list[tuple[str, str, list[int]]], seed: int = 0
                 ) -> list[np.ndarray]:
    """fer2013/fer2013.csv and fer2013new.csv with one row per (usage, ferplus name, votes).
    Returns the 48x48 greyscale images in row order."""
    images = make_fer2013(root, [(usage, 3) for usage, _, _ in rows], seed)
    with open(root / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", *FERPLUS_COLUMNS])
        for usage, name, votes in rows:
            writer.writerow([usage, name, *votes])
    return images
