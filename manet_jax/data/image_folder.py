"""The official MA-Net folder layout (`train/<k>/`, `test/<k>/`), for folders prepared for the
PyTorch code; folder `k` is canonical class `k` (0 Neutral ... 6 Anger, 7 Contempt)."""

from __future__ import annotations

from pathlib import Path

from manet_jax.data.builder_base import (
    FerBuilder,
    SourceExample,
    class_folder_examples,
    num_classes_configs,
)
from manet_jax.data.labels import CANONICAL_CLASSES

# Folder name -> canonical index: MA-Net's folders use the canonical order.
IMAGE_FOLDER_LABELS = {str(k): k for k in range(len(CANONICAL_CLASSES))}


class ImageFolder(FerBuilder):
    """Any dataset sorted into MA-Net's `train/<k>/` and `test/<k>/` class folders."""

    BUILDER_CONFIGS = num_classes_configs("Folders 0-6.", "Folders 0-7.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Point the manual dir at a folder prepared for the official MA-Net code:
      train/0 ... train/6 (train/7 for 8 classes)   test/0 ... test/6 (test/7)
    where folder k holds the images of class k: 0 Neutral, 1 Happiness, 2 Sadness, 3 Surprise,
    4 Fear, 5 Disgust, 6 Anger, 7 Contempt. Then run
      python -m manet_jax.data.prepare --dataset image_folder/7 --manual-dir DIR --data-dir OUT
    The prepared dataset is stored under OUT/image_folder/7; use a separate --data-dir for each
    folder you prepare.
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        folders = {name: k for name, k in IMAGE_FOLDER_LABELS.items() if k < self.num_classes}
        return {split: class_folder_examples(manual_dir / split, manual_dir, folders,
                                             self.num_classes)
                for split in ("train", "test")}
