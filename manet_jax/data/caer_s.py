"""CAER-S: TV-show frames (context included, not face crops) in class folders, 7 classes."""

from __future__ import annotations

from pathlib import Path

from manet_jax.data.builder_base import FerBuilder, SourceExample, class_folder_examples, find_root
from manet_jax.data.labels import canonical_indices

# Class folder name -> canonical class (copies name the anger folder either way).
CAER_S_LABELS = canonical_indices({
    "Angry": "Anger",
    "Anger": "Anger",
    "Disgust": "Disgust",
    "Fear": "Fear",
    "Happy": "Happiness",
    "Neutral": "Neutral",
    "Sad": "Sadness",
    "Surprise": "Surprise",
})


class CaerS(FerBuilder):
    """CAER-S: 48,995 train and 20,987 test frames (no validation split; papers report on test)."""

    HOMEPAGE = "https://caer-dataset.github.io/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    CAER-S is available for research use on request at https://caer-dataset.github.io/ .
    Extract it so that the manual dir (or a `CAER-S/` folder inside it) holds:
      train/<Class>/*.png   test/<Class>/*.png
    with <Class> in Angry (or Anger), Disgust, Fear, Happy, Neutral, Sad, Surprise. Then run:
      python -m manet_jax.data.prepare --dataset caer_s --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        root = find_root(manual_dir, "train", wrappers=("CAER-S",))
        return {split: class_folder_examples(root / split, root, CAER_S_LABELS, self.num_classes)
                for split in ("train", "test")}
