"""Faces followed across video frames: a box-overlap (IoU) tracker, and per-track smoothing of the
class probabilities."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np

from manet_jax.inference.faces import Box

MIN_IOU = 0.3  # a face continues a track if its box overlaps the track's last box at least this much
MAX_MISSED = 1  # sampled frames a track may go unseen and still continue


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    height = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    overlap = width * height
    return overlap / (a.width * a.height + b.width * b.height - overlap)


class Tracker:
    """Gives each face of each sampled frame a track id: the id of the live track whose last box it
    overlaps most (IoU at least `min_iou`, each track taken by one face, the best overlaps first),
    else a new id (0, 1, ...). A track lives on through `max_missed` sampled frames without a face."""

    def __init__(self, min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED):
        self.min_iou, self.max_missed = min_iou, max_missed
        self._tracks: dict[int, tuple[Box, int]] = {}  # id: (last box, frames missed since)
        self._next_id = 0

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """The track ids of the faces `boxes` of the next sampled frame, in their order."""
        pairs = sorted(((iou(box, last), i, track) for i, box in enumerate(boxes)
                        for track, (last, _) in self._tracks.items()), reverse=True)
        ids: dict[int, int] = {}  # face index: track id
        for overlap, i, track in pairs:
            if overlap >= self.min_iou and i not in ids and track not in ids.values():
                ids[i] = track
        for i in range(len(boxes)):
            if i not in ids:
                ids[i], self._next_id = self._next_id, self._next_id + 1
        seen = {track: (boxes[i], 0) for i, track in ids.items()}
        self._tracks = {**{track: (box, missed + 1) for track, (box, missed) in self._tracks.items()
                           if missed < self.max_missed}, **seen}
        return [ids[i] for i in range(len(boxes))]


Probabilities = Mapping[str, Mapping[str, float]]  # branch: class: probability


class Smoother:
    """Per-track moving average: each face's probabilities (every branch) become the mean of the
    last `k` of its track, its own included."""

    def __init__(self, k: int):
        self._history: dict[int, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=k))

    def __call__(self, track: int, probabilities: Probabilities) -> dict[str, dict[str, float]]:
        history = self._history[track]
        history.append(probabilities)
        return {branch: {name: float(np.mean([p[branch][name] for p in history])) for name in classes}
                for branch, classes in probabilities.items()}
