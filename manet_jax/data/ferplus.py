"""FERPlus: FER2013's 48x48 greyscale faces relabelled by 10 annotators, 8 classes.

Labels follow the reference (microsoft/FERPlus) "majority" rule: classes with a single vote are
zeroed, the arg-max is kept only if it holds more than half of the remaining votes, and images
whose result is unknown or not-a-face (or that have no FERPlus name) are dropped. Splits follow
FER2013's Usage column: Training -> train, PublicTest -> validation, PrivateTest -> test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from manet_jax.data.builder_base import FerBuilder, SourceExample
from manet_jax.data.errors import ManualFilesError
from manet_jax.data.fer2013 import FER2013_CSV, USAGE_SPLITS, pixels_png, read_csv, read_fer2013
from manet_jax.data.labels import canonical_indices

# fer2013new.csv vote columns (in file order) -> canonical class.
FERPLUS_LABELS = canonical_indices({
    "neutral": "Neutral",
    "happiness": "Happiness",
    "surprise": "Surprise",
    "sadness": "Sadness",
    "anger": "Anger",
    "disgust": "Disgust",
    "fear": "Fear",
    "contempt": "Contempt",
})
VOTE_COLUMNS = (*FERPLUS_LABELS, "unknown", "NF")
FERPLUS_CSV = "fer2013new.csv"
FERPLUS_HEADER = ["Usage", "Image name", *VOTE_COLUMNS]


def majority_vote(votes: Sequence[float]) -> int | None:
    """The FERPlus class (index into VOTE_COLUMNS[:8]) that wins the 10 vote counts, or None."""
    votes = np.asarray(votes, np.float64).copy()
    votes[votes < 1.0 + np.finfo(float).eps] = 0.0  # drop single votes (outliers)
    if not votes.max() > 0.5 * votes.sum():
        return None
    winner = int(np.argmax(votes))
    return winner if winner < len(FERPLUS_LABELS) else None  # unknown / not a face


class Ferplus(FerBuilder):
    """FERPlus majority-vote labels on FER2013's 28,709 train, 3,589 validation (PublicTest) and
    3,589 test (PrivateTest) faces, less those without a majority."""

    NUM_CLASSES = 8
    HOMEPAGE = "https://github.com/microsoft/FERPlus"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put two files in the manual dir (or in a `fer2013/` folder inside it):
      fer2013.csv      FER2013 (columns emotion,pixels,Usage), from the Kaggle "Challenges in
                       Representation Learning: Facial Expression Recognition Challenge" data
                       (fer2013.tar.gz -> fer2013/fer2013.csv)
      fer2013new.csv   the FERPlus votes, from https://github.com/microsoft/FERPlus
    Then run:
      python -m manet_jax.data.prepare --dataset ferplus --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        fer_rows = read_fer2013(manual_dir)
        plus_rows = read_csv(manual_dir, FERPLUS_CSV, FERPLUS_HEADER)
        if len(fer_rows) != len(plus_rows):
            raise ManualFilesError(f"{FER2013_CSV} has {len(fer_rows)} rows but {FERPLUS_CSV} has "
                                   f"{len(plus_rows)}; they must match line by line.")
        splits: dict[str, list[SourceExample]] = {split: [] for split in USAGE_SPLITS.values()}
        for line_no, (fer, plus) in enumerate(zip(fer_rows, plus_rows), 2):
            if len(plus) != len(FERPLUS_HEADER) or fer[2] != plus[0]:
                raise ManualFilesError(f"line {line_no} of {FER2013_CSV} and {FERPLUS_CSV} do not "
                                       "hold the same image (Usage differs or fields are missing).")
            name = plus[1].strip()
            try:
                winner = majority_vote([float(v) for v in plus[2:]])
            except ValueError:
                raise ManualFilesError(
                    f"{FERPLUS_CSV}:{line_no}: bad vote counts {plus[2:]}.") from None
            if name and winner is not None:
                label = FERPLUS_LABELS[VOTE_COLUMNS[winner]]
                splits[USAGE_SPLITS[fer[2]]].append(
                    SourceExample(name, label, lambda pixels=fer[1]: pixels_png(pixels)))
        return splits

