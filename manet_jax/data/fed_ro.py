"""FED-RO: 400 faces with real occlusions in 7 class folders, a test set only (Li et al., "Occlusion
aware facial expression recognition using CNN with attention mechanism", IEEE TIP 2019).

MA-Net tests on it after training on AffectNet-7 and RAF-DB (`configs/fed_ro.py`). Its authors
publish it for download in the README of https://github.com/mysee1989/PG-CNN (MA-Net issue #3
points there) as class folders of `occ_img_<n>.jpg`; the neutral folder is spelt `neural`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from manet_jax.data.builder_base import FerBuilder, SourceExample, class_folder_examples
from manet_jax.data.labels import canonical_indices

# Class folder name -> canonical class (the distribution spells neutral "neural").
FED_RO_LABELS = canonical_indices({
    "anger": "Anger",
    "disgust": "Disgust",
    "fear": "Fear",
    "happy": "Happiness",
    "neural": "Neutral",
    "neutral": "Neutral",
    "sad": "Sadness",
    "surprise": "Surprise",
})
NUM_IMAGES = 400  # as published; some downloads lack a few (PG-CNN issue #8)

log = logging.getLogger(__name__)


class FedRo(FerBuilder):
    """FED-RO: 400 occluded faces, 7 classes, one split (`test`) for cross-dataset evaluation."""

    TRAIN_SPLIT = None
    HOMEPAGE = "https://github.com/mysee1989/PG-CNN"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    FED-RO is downloaded from the links in the README of https://github.com/mysee1989/PG-CNN
    (OneDrive, or Baidu Yun). Extract it so that the manual dir (or the one folder inside it)
    holds the 7 class folders:
      anger/ disgust/ fear/ happy/ neural/ (or neutral/) sad/ surprise/    each with occ_img_<n>.jpg
    Then run:
      python -m manet_jax.data.prepare --dataset fed_ro --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        root = manual_dir
        folders = [p for p in manual_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(folders) == 1 and folders[0].name not in FED_RO_LABELS:  # the archive's own top folder
            root = folders[0]
        examples = class_folder_examples(root, root, FED_RO_LABELS, self.num_classes)
        if len(examples) != NUM_IMAGES:
            log.warning("fed_ro: %d images in %s; FED-RO has %d (some copies lack a few, see "
                        "https://github.com/mysee1989/PG-CNN/issues/8)", len(examples), root, NUM_IMAGES)
        return {"test": examples}
