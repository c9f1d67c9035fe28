"""Metric records to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard/`), process 0 only.

A record is a JSON object with `step` (optimizer steps done), `epoch` and nested metric dicts,
e.g. `{"step": 96, "epoch": 1, "train": {"loss": ...}, "eval": {"raf_db/test": {"fused": {"accuracy":
...}}}}`. TensorBoard gets every number as a scalar tagged by its path (`eval/raf_db/test/fused/accuracy`,
`eval/raf_db/test/fused/recall/Happiness`); lists (confusion matrices) stay in the JSON, and are drawn as
images. Both go through the storage layer (`manet_jax.storage`), to a local disk or a bucket alike.
Each write first checks that this trainer still holds the workdir's lease (`lease.check_held`).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import socket
import struct
import time
from typing import Any

import google_crc32c

import numpy as np
import tensorflow as tf
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

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
        for tag, value in _scalars(record):
            self._tensorboard.scalar(tag, value, record["step"])
        self._tensorboard.flush()

    def write_figure(self, tag: str, figure: Figure, step: int) -> None:
        if self.enabled:
            check_held(self.lease)
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            pixels, png = np.asarray(canvas.buffer_rgba())[..., :3], io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG")
            self._tensorboard.image(tag, png.getvalue(), pixels.shape[1], pixels.shape[0], step)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()


class EventFiles:
    """TensorBoard event files in `directory`, kept in memory and written whole through the storage
    layer at each flush (TensorFlow's own writer would reach a bucket only through its `gs://`
    filesystem). Each event is a TFRecord of a `tensorflow.Event`, scalars and images as
    `tf.summary`'s v2 ops write them. A file that reaches ROTATE_BYTES is complete, and the next
    event starts another (TensorBoard reads a directory's files in order)."""

    def __init__(self, directory: epath.Path):
        self.directory, self._data, self._name, self._written = directory, bytearray(), None, 0
        self._files = itertools.count()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(step, tag, tf.make_tensor_proto(np.float32(value)), "scalars")

    def image(self, tag: str, png: bytes, width: int, height: int, step: int) -> None:
        self._add(step, tag, tf.make_tensor_proto([str(width).encode(), str(height).encode(), png]), "images")

    def _add(self, step: int, tag: str, tensor: Any, plugin: str) -> None:
        if self._name is None:
            now = time.time()
            self._name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(self._files)}.v2"
            self._data += _record(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))
        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        self._data += _record(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])))

    def flush(self) -> None:
        """Writes the current file whole, when it holds events not written yet."""
        if self._name is None or len(self._data) == self._written:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        storage.replace_bytes(self.directory / self._name, bytes(self._data))
        self._written = len(self._data)
        if self._written >= ROTATE_BYTES:
            self._data, self._name, self._written = bytearray(), None, 0


def _record(event: Any) -> bytes:
    """`event` framed as a TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    data = event.SerializeToString()
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _scalars(tree: dict[str, Any], prefix: str = ""):
    """(tag, number) for every number in a nested record but its step."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            yield prefix + key, value
