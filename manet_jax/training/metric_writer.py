"""Metric records to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard/`), process 0 only.

A record is a JSON object with `step` (optimizer steps done), `epoch` and nested metric dicts,
e.g. `{"step": 96, "epoch": 1, "train": {"loss": ...}, "eval": {"raf_db/test": {"fused": {"accuracy":
...}}}}`. TensorBoard gets every number as a scalar tagged by its path (`eval/raf_db/test/fused/accuracy`,
`eval/raf_db/test/fused/recall/Happiness`); lists (confusion matrices) stay in the JSON, and are drawn as
images. TensorFlow's summary writer writes local paths and `gs://` buckets alike. Each write first
checks that this trainer still holds the workdir's lease (`lease.check_held`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import tensorflow as tf
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from manet_jax.errors import ManetError
from manet_jax.training.lease import Lease, check_held
from manet_jax.training.workdir import replace_text

METRICS_FILE, TENSORBOARD_DIR = "metrics.jsonl", "tensorboard"

logger = logging.getLogger(__name__)


class MetricsFileError(ManetError, ValueError):
    """A line of metrics.jsonl before its last is not a record; the message names the line."""


class MetricWriter:
    """Writes records when `enabled` (process 0), while this trainer holds `lease` (if given); does
    nothing elsewhere."""

    def __init__(self, workdir: epath.PathLike, enabled: bool = True, lease: Lease | None = None):
        self.enabled, self.lease = enabled, lease
        self.path = epath.Path(workdir) / METRICS_FILE
        self._tensorboard = None
        if enabled:
            self._tensorboard = tf.summary.create_file_writer(str(epath.Path(workdir) / TENSORBOARD_DIR))

    def truncate(self, step: int) -> None:
        """Drops records after `step`: a resumed run rewrites what followed its checkpoint. A last
        line cut short (a run killed, or a disk full, while appending it) is dropped with a warning."""
        if not (self.enabled and self.path.exists()):
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                record_step = json.loads(line)["step"]
            except (ValueError, TypeError, KeyError) as e:
                if number < len(lines):
                    raise MetricsFileError(f"{self.path}: line {number} is not a metric record ({type(e).__name__}: "
                                           f"{e}); remove or repair it, then run the same command again") from None
                logger.warning("%s: dropped line %d, cut short when the last run stopped while writing it",
                               self.path, number)
                continue
            if record_step <= step:
                kept.append(line)
        check_held(self.lease)
        replace_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        check_held(self.lease)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with self._tensorboard.as_default(step=record["step"]):
            for tag, value in _scalars(record):
                tf.summary.scalar(tag, value)
        self._tensorboard.flush()

    def write_figure(self, tag: str, figure: Figure, step: int) -> None:
        if self.enabled:
            check_held(self.lease)
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
