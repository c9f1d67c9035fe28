"""FER2013: the Kaggle "Challenges in Representation Learning" 48x48 greyscale faces, 7 classes.

One file, `fer2013.csv` (columns emotion, pixels, Usage), holds every image as 2,304 pixel values
with its original label. Splits follow the Usage column: Training -> train (28,709), PublicTest ->
validation (3,589), PrivateTest -> test (3,589, what papers report). Images are named as FERPlus
names them, `fer<row>.png` with the 0-based data row in 7 digits, so that both datasets name the
same image alike. `ferplus.py` reads the same file.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from manet_jax.data.builder_base import FerBuilder, SourceExample, first_existing
from manet_jax.data.errors import ManualFilesError
from manet_jax.data.image_files import encode_image
from manet_jax.data.labels import canonical_indices

# fer2013.csv `emotion` codes -> canonical class.
FER2013_LABELS = canonical_indices({
    0: "Anger",
    1: "Disgust",
    2: "Fear",
    3: "Happiness",
    4: "Sadness",
    5: "Surprise",
    6: "Neutral",
})
USAGE_SPLITS = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
FER2013_CSV = "fer2013.csv"
FER2013_HEADER = ["emotion", "pixels", "Usage"]
IMAGE_SIZE = 48


def image_name(row: int) -> str:
    """FERPlus's name of the image in data row `row` (0-based) of fer2013.csv."""
    return f"fer{row:07d}.png"


class Fer2013(FerBuilder):
    """FER2013 with its original 7-class labels: 28,709 train, 3,589 validation (PublicTest) and
    3,589 test (PrivateTest) faces."""

    HOMEPAGE = "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put fer2013.csv in the manual dir (or in a `fer2013/` folder inside it): FER2013 (columns
    emotion,pixels,Usage), from the Kaggle "Challenges in Representation Learning: Facial
    Expression Recognition Challenge" data (fer2013.tar.gz -> fer2013/fer2013.csv). Then run:
      python -m manet_jax.data.prepare --dataset fer2013 --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        splits: dict[str, list[SourceExample]] = {split: [] for split in USAGE_SPLITS.values()}
        for row, (emotion, pixels, usage) in enumerate(read_fer2013(manual_dir)):
            code = int(emotion) if emotion.strip().isdigit() else None
            if code not in FER2013_LABELS:
                raise ManualFilesError(f"{FER2013_CSV}:{row + 2}: expected an emotion code 0-6, got {emotion!r}.")
            splits[USAGE_SPLITS[usage]].append(
                SourceExample(image_name(row), FER2013_LABELS[code], lambda pixels=pixels: pixels_png(pixels)))
        return splits


def read_fer2013(manual_dir: Path) -> list[list[str]]:
    """The data rows (emotion, pixels, Usage) of the manual dir's fer2013.csv, checked for their
    three fields and a known Usage."""
    rows = read_csv(manual_dir, FER2013_CSV, FER2013_HEADER)
    for line_no, row in enumerate(rows, 2):
        if len(row) != 3 or row[2] not in USAGE_SPLITS:
            raise ManualFilesError(f"{FER2013_CSV}:{line_no}: expected emotion,pixels,Usage with Usage one of "
                                   f"{', '.join(USAGE_SPLITS)}.")
    return rows


def read_csv(manual_dir: Path, name: str, header: list[str]) -> list[list[str]]:
    """The rows after the header of file `name` in the manual dir or its `fer2013/` folder."""
    path = first_existing([manual_dir / name, manual_dir / "fer2013" / name], name)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != header:
        raise ManualFilesError(f"{path}: expected the header {','.join(header)}.")
    return rows[1:]


def pixels_png(pixels: str) -> bytes:
    """A row's space-separated pixel values as a 48x48 greyscale PNG; ValueError if malformed."""
    values = np.array(pixels.split(), np.int64)
    if values.size != IMAGE_SIZE * IMAGE_SIZE or values.min() < 0 or values.max() > 255:
        raise ValueError(f"expected {IMAGE_SIZE * IMAGE_SIZE} pixel values in 0-255")
    return encode_image(values.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE), "PNG")
