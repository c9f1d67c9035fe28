"""RAF-DB (basic): the official 100x100 aligned faces with the official train/test partition."""

from __future__ import annotations

from pathlib import Path

from manet_jax.data.builder_base import FerBuilder, SourceExample, file_example, find_root, require
from manet_jax.data.errors import ManualFilesError
from manet_jax.data.labels import canonical_indices

LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: the distribution spells it "patition"
ALIGNED_DIR = "Image/aligned"

# The label file's 1-based codes -> canonical class.
RAF_DB_LABELS = canonical_indices({
    1: "Surprise",
    2: "Fear",
    3: "Disgust",
    4: "Happiness",
    5: "Sadness",
    6: "Anger",
    7: "Neutral",
})


class RafDb(FerBuilder):
    """RAF-DB basic emotions: 12,271 train and 3,068 test aligned faces (100x100), 7 classes."""

    HOMEPAGE = "http://www.whdeng.cn/RAF/model1.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    RAF-DB is licensed for non-commercial research only. Request access at
    http://www.whdeng.cn/RAF/model1.html (the authors e-mail a download link), download the
    "basic" part and extract it so that the manual dir (or a `basic/` folder inside it) holds:
      EmoLabel/list_patition_label.txt        lines "train_00001.jpg 5" (codes 1-7)
      Image/aligned/train_00001_aligned.jpg   ... test_3068_aligned.jpg
    Then run:
      python -m manet_jax.data.prepare --dataset raf_db --manual-dir DIR
    """

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        root = find_root(manual_dir, LABEL_FILE, wrappers=("basic",))
        image_dir = require(root / ALIGNED_DIR, "the aligned images folder")
        splits: dict[str, list[SourceExample]] = {"train": [], "test": []}
        label_file = root / LABEL_FILE
        for line_no, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            code = int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else None
            split = fields[0].split("_", 1)[0]
            if code not in RAF_DB_LABELS or split not in splits:
                raise ManualFilesError(
                    f"{label_file}:{line_no}: expected '<train|test>_<n>.jpg <1-7>', got {line!r}.")
            aligned = image_dir / f"{Path(fields[0]).stem}_aligned.jpg"
            splits[split].append(file_example(aligned, root, RAF_DB_LABELS[code]))
        return splits

