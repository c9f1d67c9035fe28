"""Metric records to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard/`), process 0 only.

A record is a JSON object with `step` (optimizer steps done), `epoch` and nested metric dicts,
e.g. `{"step": 96, "epoch": 1, "train": {"loss": ...}, "eval": {"raf_db/test": {"fused": {"accuracy":
...}}}}`. TensorBoard gets every number as a scalar tagged by its path (`eval/raf_db/test/fused/accuracy`,
`eval/raf_db/test/fused/recall/Happiness`); lists (confusion matrices) stay in the JSON, and are drawn as
images. Both go through the storage layer (`manet_jax.storage`), to a local disk or a bucket alike.
Each write first checks that this trainer still holds the workdir's lease (`lease.check_held`).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import numpy as np
import tensorflow as tf
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from manet_jax import storage
from manet_jax.errors import ManetError
from manet_jax.training.lease import Lease, check_held

METRICS_FILE, TENSORBOARD_DIR = "metrics.jsonl", "tensorboard"
ROTATE_BYTES = 1 << 20  # an event file this large is complete; the next write starts another

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
            self._tensorboard = EventFiles(epath.Path(workdir) / TENSORBOARD_DIR)

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
        storage.replace_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        check_held(self.lease)
        storage.append_text(self.path, json.dumps(record) + "\n")
        with self._tensorboard.writer().as_default(step=record["step"]):
            for tag, value in _scalars(record):
                tf.summary.scalar(tag, value)
        self._tensorboard.flush()

    def write_figure(self, tag: str, figure: Figure, step: int) -> None:
        if self.enabled:
            check_held(self.lease)
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            pixels = np.asarray(canvas.buffer_rgba())[None, ..., :3]
            with self._tensorboard.writer().as_default(step=step):
                tf.summary.image(tag, pixels)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


class EventFiles:
    """TensorBoard event files in `directory`, written by TensorFlow's summary writer into memory
    (`ram://`) and copied whole through the storage layer at each flush: TensorFlow's writer would
    reach a bucket only through its own `gs://` filesystem. A file that reaches ROTATE_BYTES is
    complete, and the next write starts another (TensorBoard reads a directory's files in order)."""

    def __init__(self, directory: epath.Path):
        self.directory, self._memory = directory, f"ram://manet_jax/tensorboard/{secrets.token_hex(8)}"
        self._writer = None

    def writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._memory)
        return self._writer

    def flush(self) -> None:
        self._writer.flush()
        (name,) = tf.io.gfile.glob(f"{self._memory}/*")
        with tf.io.gfile.GFile(name, "rb") as f:
            data = f.read()
        self.directory.mkdir(parents=True, exist_ok=True)
        storage.replace_bytes(self.directory / name.rpartition("/")[2], data)
        if len(data) >= ROTATE_BYTES:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            tf.io.gfile.rmtree(self._memory)
            self._writer = None


def _scalars(tree: dict[str, Any], prefix: str = ""):
    """(tag, number) for every number in a nested record but its step."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            yield prefix + key, value
