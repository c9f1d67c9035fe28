"""Metric records to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard/`), process 0 only.

A record is a JSON object with `step` (optimizer steps done), `epoch` and nested metric dicts,
e.g. `{"step": 96, "epoch": 1, "train": {"loss": ...}, "eval": {"raf_db/test": {"fused": {"accuracy":
...}}}}`. TensorBoard gets every number as a scalar tagged by its path (`eval/raf_db/test/fused/accuracy`,
`eval/raf_db/test/fused/recall/Happiness`); lists (confusion matrices) stay in the JSON, and are drawn as
images. TensorFlow's summary writer writes local paths and `gs://` buckets alike.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tensorflow as tf
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

METRICS_FILE, TENSORBOARD_DIR = "metrics.jsonl", "tensorboard"


class MetricWriter:
    """Writes records when `enabled` (process 0); does nothing elsewhere."""

    def __init__(self, workdir: epath.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / METRICS_FILE
        self._tensorboard = None
        if enabled:
            self._tensorboard = tf.summary.create_file_writer(str(epath.Path(workdir) / TENSORBOARD_DIR))

    def truncate(self, step: int) -> None:
        """Drops records after `step`: a resumed run rewrites what followed its checkpoint."""
        if self.enabled and self.path.exists():
            lines = [line for line in self.path.read_text().splitlines()
                     if line and json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in lines))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self._tensorboard.as_default(step=record["step"]):
            for tag, value in _scalars(record):
                tf.summary.scalar(tag, value)
        self._tensorboard.flush()

    def write_figure(self, tag: str, figure: Figure, step: int) -> None:
        if self.enabled:
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            pixels = np.asarray(canvas.buffer_rgba())[None, ..., :3]
            with self._tensorboard.as_default(step=step):
                tf.summary.image(tag, pixels)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _scalars(tree: dict[str, Any], prefix: str = ""):
    """(tag, number) for every number in a nested record but its step."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            yield prefix + key, value
