"""Videos and cameras in, one record per face per sampled frame out: sample, detect, track, crop or align,
predict in batches shared across frames, smooth per track, draw."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from manet_jax.bundle import FaceTemplate
from manet_jax.inference.alignment import face_crop
from manet_jax.inference.detectors import Detector
from manet_jax.inference.faces import MARGIN
from manet_jax.inference.photos import Batcher, crop_boxes
from manet_jax.inference.predictor import Predictor
from manet_jax.inference.preprocess import eval_view
from manet_jax.inference.records import NO_FACE, OK, Record
from manet_jax.inference.tracking import Smoother, Tracker
from manet_jax.inference.video import Frame, VideoSource, VideoWriter
from manet_jax.inference.visualize import annotate_frame


@dataclasses.dataclass
class VideoResult:
    """A source's records in frame order (a `no face` record for a frame without faces), how many
    frames were sampled, and whether `stop` or Ctrl-C ended the reading early."""

    records: list[Record]
    frames: int
    interrupted: bool


def predict_video(source: VideoSource, predictor: Predictor, *, every: int = 1, fps: float | None = None,
                  detect_faces: Detector | None, margin: float = MARGIN, template: FaceTemplate | None = None,
                  smooth: int = 1, annotate: Path | None = None, stop: Callable[[], bool] = lambda: False
                  ) -> VideoResult:
    """Records for the faces of `source`'s frames sampled by `every` or `fps` (see
    `VideoSource.frames`), each with the frame's index and time and its face's track id.

    Faces are found and cropped as in images (`crop_boxes`), or aligned onto `template` (frame by
    frame; tracks follow the boxes), and predicted `predictor.batch_size`
    at a time, across frames. With `smooth` > 1 each face's probabilities (and label) are the mean
    of its track's last `smooth`. `annotate` gets the sampled frames with their faces drawn, at the
    sampling rate. `stop()`, asked before each sampled frame, or Ctrl-C (KeyboardInterrupt) ends
    the reading; the frames read so far are still predicted.
    """
    batcher, tracker, smoother = Batcher(predictor, None), Tracker(), Smoother(smooth)
    writer = VideoWriter(annotate, fps or source.fps / every) if annotate else None
    records: list[Record] = []
    pending: collections.deque[tuple[Frame, list[Record]]] = collections.deque()  # frames not yet finished

    def finish_predicted() -> None:
        """Smooths and draws the oldest frames whose faces are all predicted, in frame order."""
        while pending and all(r.label is not None for r in pending[0][1] if r.status == OK):
            frame, faces = pending.popleft()
            for record in faces:
                if record.status == OK and smooth > 1:
                    record.probabilities = smoother(record.track, record.probabilities)
                    fused = record.probabilities["fused"]
                    record.label = max(fused, key=fused.get)
            if writer:
                writer.write(annotate_frame(frame.pixels, faces))

    frames, interrupted = 0, False
    try:
        with contextlib.closing(source.frames(every, fps)) as sampled:  # releases the capture on Ctrl-C too
            for frame in sampled:
                if stop():
                    interrupted = True
                    break
                boxes = crop_boxes(frame.pixels, detect_faces, margin)
                faces = [Record(source.name, OK, face=face, box=box, frame=frame.index, time_s=frame.time_s,
                                track=track) for face, (box, track) in enumerate(zip(boxes, tracker.update(boxes)))]
                size = predictor.spec.image_size
                for record, box in zip(faces, boxes):
                    batcher.add(record, eval_view(face_crop(frame.pixels, box, template, size), size))
                faces = faces or [Record(source.name, NO_FACE, frame=frame.index, time_s=frame.time_s)]
                records += faces
                pending.append((frame, faces))
                frames += 1
                finish_predicted()
    except KeyboardInterrupt:
        interrupted = True
    try:
        batcher.flush()
        finish_predicted()
    finally:
        if writer:
            writer.close()
    return VideoResult(records, frames, interrupted)
