"""SFEW 2.0 (EmotiW 2015): aligned faces of movie frames, 7 classes; Val is the reported split."""

from __future__ import annotations

from pathlib import Path

from manet_jax.data.builder_base import (
    FerBuilder,
    SourceExample,
    class_folder_examples,
    first_existing,
)
from manet_jax.data.labels import canonical_indices

# Class folder name -> canonical class.
SFEW_LABELS = canonical_indices({
    "Angry": "Anger",
    "Disgust": "Disgust",
    "Fear": "Fear",
    "Happy": "Happiness",
    "Neutral": "Neutral",
    "Sad": "Sadness",
    "Surprise": "Surprise",
})

# Split -> candidate aligned-face folders (some copies drop the "_new").
SPLIT_DIRS = {
    "train": ("Train/Train_Aligned_Faces",),
    "validation": ("Val/Val_Aligned_Faces_new", "Val/Val_Aligned_Faces"),
}


class Sfew(FerBuilder):
    """SFEW 2.0: 958 train and 436 validation aligned faces; the test set has no public labels."""

    EVAL_SPLIT = "validation"
    HOMEPAGE = "https://cs.anu.edu.au/few/AFEW.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    SFEW 2.0 is distributed by the EmotiW organisers on request (see
    https://cs.anu.edu.au/few/AFEW.html). Extract Train and Val so that the manual dir holds:
      Train/Train_Aligned_Faces/<Class>/*.png
      Val/Val_Aligned_Faces_new/<Class>/*.png     (or Val/Val_Aligned_Faces/)
    with <Class> in Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise. The unlabelled Test set
    is not used. Then run:
      python -m manet_jax.data.prepare --dataset sfew --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        return {split: class_folder_examples(
                    first_existing([manual_dir / c for c in candidates], f"the {split} folder"),
                    manual_dir, SFEW_LABELS, self.num_classes)
                for split, candidates in SPLIT_DIRS.items()}
