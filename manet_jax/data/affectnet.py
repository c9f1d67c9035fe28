"""AffectNet (manually annotated part), 7 or 8 classes, from either of its two releases.

Original release: `Manually_Annotated_file_lists/{training,validation}.csv` + the full images
under `Manually_Annotated_Images/`; each face is cropped with the CSV's box and stored as JPEG
(quality 95). Newer release: already cropped faces `{train,val}_set/images/<id>.jpg` with labels in
`{train,val}_set/annotations/<id>_exp.npy`. Codes 8-10 (None, Uncertain, No-Face) are always
dropped, and 7 (Contempt) in the 7-class config. The official validation set is the `test` split,
as in every paper (the test set was never released).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from manet_jax.data.builder_base import (
    FerBuilder,
    SourceExample,
    file_example,
    first_existing,
    num_classes_configs,
    require,
)
from manet_jax.data.errors import ManualFilesError
from manet_jax.data.image_files import encode_image
from manet_jax.data.labels import canonical_indices

# AffectNet's expression codes -> canonical class (the same order).
AFFECTNET_LABELS = canonical_indices({
    0: "Neutral",
    1: "Happiness",
    2: "Sadness",
    3: "Surprise",
    4: "Fear",
    5: "Disgust",
    6: "Anger",
    7: "Contempt",
    # 8 None, 9 Uncertain, 10 No-Face: dropped.
})

CSV_DIR = "Manually_Annotated_file_lists"
CSV_FILES = {"train": "training.csv", "test": "validation.csv"}
IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
               "facial_landmarks", "expression", "valence", "arousal")
NEW_RELEASE_DIRS = {"train": "train_set", "test": "val_set"}
CROP_JPEG_QUALITY = 95


class Affectnet(FerBuilder):
    """AffectNet: ~283,901 / 287,651 train and 3,500 / 4,000 test (validation) faces (7 / 8 cls)."""

    BUILDER_CONFIGS = num_classes_configs("Codes 0-6 (no Contempt).", "Codes 0-7 (with Contempt).")
    HOMEPAGE = "http://mohammadmahoor.com/affectnet/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    AffectNet is licensed for non-commercial research only: request it from the authors at
    http://mohammadmahoor.com/affectnet/ . Extract either release into the manual dir:
      original release:
        Manually_Annotated_file_lists/training.csv, validation.csv
        Manually_Annotated_Images/<subdir>/<file>.jpg
          (or Manually_Annotated/Manually_Annotated_Images/<subdir>/<file>.jpg)
      newer release:
        train_set/images/<id>.jpg, train_set/annotations/<id>_exp.npy
        val_set/images/<id>.jpg,   val_set/annotations/<id>_exp.npy
    Then run (both configs read the same files):
      python -m manet_jax.data.prepare --dataset affectnet/7 --manual-dir DIR
      python -m manet_jax.data.prepare --dataset affectnet/8 --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        if (manual_dir / CSV_DIR).is_dir():
            return self._original_release(manual_dir)
        if all((manual_dir / d).is_dir() for d in NEW_RELEASE_DIRS.values()):
            return self._newer_release(manual_dir)
        raise ManualFilesError(
            f"found neither {manual_dir / CSV_DIR} (original release) nor "
            f"{manual_dir / 'train_set'} and {manual_dir / 'val_set'} (newer release).")

    def _original_release(self, root: Path) -> dict[str, list[SourceExample]]:
        image_dir = first_existing([root / d for d in IMAGE_DIRS], "the images folder")
        return {split: [_face_example(image_dir, row, label, csv_path, line_no)
                        for csv_path, line_no, row, label
                        in self._csv_rows(require(root / CSV_DIR / name, "the file list"))]
                for split, name in CSV_FILES.items()}

    def _csv_rows(self, csv_path: Path):
        """(path, line number, row dict, canonical label) of the rows kept by this config."""
        with open(csv_path, newline="") as f:
            rows = list(csv.reader(f))
        start = 1 if rows and rows[0][:1] == [CSV_COLUMNS[0]] else 0  # validation.csv may lack it
        columns = rows[0] if start else CSV_COLUMNS
        for line_no, fields in enumerate(rows[start:], start + 1):
            row = dict(zip(columns, fields))
            try:
                code = int(row["expression"])
            except (KeyError, ValueError):
                raise ManualFilesError(f"{csv_path}:{line_no}: expected the columns "
                                       f"{','.join(CSV_COLUMNS)}.") from None
            if code in AFFECTNET_LABELS and AFFECTNET_LABELS[code] < self.num_classes:
                yield csv_path, line_no, row, AFFECTNET_LABELS[code]

    def _newer_release(self, root: Path) -> dict[str, list[SourceExample]]:
        splits = {}
        for split, name in NEW_RELEASE_DIRS.items():
            images = sorted((require(root / name / "images", "the images folder")).glob("*.jpg"))
            annotations = require(root / name / "annotations", "the annotations folder")
            splits[split] = []
            for image in images:
                code = _expression_code(annotations / f"{image.stem}_exp.npy")
                if code in AFFECTNET_LABELS and AFFECTNET_LABELS[code] < self.num_classes:
                    splits[split].append(file_example(image, root, AFFECTNET_LABELS[code]))
        return splits


def _expression_code(path: Path) -> int:
    try:
        return int(np.load(path, allow_pickle=False).item())
    except (OSError, ValueError) as e:
        raise ManualFilesError(f"cannot read the expression label {path}: {e}") from None


def _face_example(image_dir: Path, row: dict[str, str], label: int, csv_path: Path,
                  line_no: int) -> SourceExample:
    try:
        box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
    except (KeyError, ValueError):
        raise ManualFilesError(f"{csv_path}:{line_no}: bad face box in {row}.") from None
    name = row["subDirectory_filePath"]
    path = image_dir / name
    return SourceExample(name, label, lambda: _crop_face(path, box), path)


def _crop_face(path: Path, box: tuple[int, int, int, int]) -> bytes:
    """The face box (x, y, width, height), clipped to the image, as JPEG."""
    with Image.open(path) as image:
        x, y, w, h = box
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + w, image.width), min(y + h, image.height)
        if right <= left or bottom <= top:
            raise ValueError(f"face box {box} lies outside the {image.width}x{image.height} image")
        return encode_image(image.convert("RGB").crop((left, top, right, bottom)), "JPEG",
                            CROP_JPEG_QUALITY)
