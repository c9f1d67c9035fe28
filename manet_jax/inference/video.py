"""Frames of video files and live cameras through OpenCV's reader, sampled every N frames or at a
frame rate, as RGB; and writing frames back out as a video."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from manet_jax.errors import ManetError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
WRITER_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}  # what --annotate writes, by extension
CAMERA_FPS = 30.0  # a camera's frame rate when it reports none


class VideoError(ManetError):
    """A video file or camera that cannot be read, or an annotated video that cannot be written."""


class Capture(Protocol):
    """What is used of `cv2.VideoCapture`; tests pass a fake camera with these methods."""

    def isOpened(self) -> bool: ...
    def grab(self) -> bool: ...
    def retrieve(self) -> tuple[bool, np.ndarray]: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Frame:
    """A sampled frame: its index in the file (or since the camera started), time and pixels."""

    index: int
    time_s: float
    pixels: np.ndarray  # (H, W, 3) uint8 RGB


@dataclasses.dataclass
class VideoSource:
    """An opened video file or camera. A file's frame times are index / fps; a camera's are read from
    `clock` (seconds), counted from its first frame."""

    name: str
    capture: Capture
    fps: float
    clock: Callable[[], float] | None = None  # None for files
    declared_frames: int = 0  # a file's frame count as its header says (0: unknown)
    frames_read: int = 0  # frames `frames()` has read so far

    def frames(self, every: int = 1, fps: float | None = None) -> Iterator[Frame]:
        """Every `every`-th frame (0, every, 2 * every, ...), or with `fps` the first frame at or after
        each multiple of 1 / fps seconds; the capture is released at the end. Raises VideoError if
        the source gives no frame at all."""
        index, start, due = 0, None, 0  # due: the next multiple of 1 / fps to sample at
        try:
            while self.capture.grab():
                if self.clock is None:
                    seconds = index / self.fps
                else:
                    now = self.clock()
                    start = now if start is None else start
                    seconds = now - start
                if index % every == 0 if fps is None else seconds * fps >= due - 1e-6:
                    ok, bgr = self.capture.retrieve()
                    if not ok:
                        break
                    if fps is not None:
                        due = math.floor(seconds * fps + 1e-6) + 1
                    yield Frame(index, seconds, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
                self.frames_read = index
        finally:
            self.capture.release()
        if index == 0:
            raise VideoError(f"{self.name}: no frame could be read")


    def ended_early(self) -> str | None:
        """For a file read to its end short of the frame count its header declares, a line saying so."""
        if self.clock is None and 0 < self.frames_read < self.declared_frames:
            return (f"{self.name}: the video ends after {self.frames_read} of the {self.declared_frames} frames its "
                    "header declares (truncated or damaged); rows are given for the frames read")
        return None


def is_video_file(path: str | Path) -> bool:
    """Whether `path` names a video by its extension (VIDEO_SUFFIXES)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_video(path: str, open_capture: Callable[[str], Capture] = cv2.VideoCapture) -> VideoSource:
    """The video file at `path`; raises VideoError if it is missing, unreadable or has no frame rate."""
    if not Path(path).is_file():
        raise VideoError(f"{path}: no such video file")
    capture = _quietly(open_capture, path)
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    if not fps > 0:
        capture.release()
        raise VideoError(f"{path}: cannot be read as a video (OpenCV's reader cannot open it or finds no frame rate)")
    return VideoSource(path, capture, fps, declared_frames=max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0))


def open_camera(index: int, open_capture: Callable[[int], Capture] = cv2.VideoCapture,
                clock: Callable[[], float] = time.monotonic) -> VideoSource:
    """Camera `index` (as `cv2.VideoCapture(index)` opens it); raises VideoError if it does not open."""
    capture = _quietly(open_capture, index)
    if not capture.isOpened():
        raise VideoError(f"--camera {index}: camera {index} cannot be opened")
    fps = capture.get(cv2.CAP_PROP_FPS)
    return VideoSource(f"camera {index}", capture, fps if fps > 0 else CAMERA_FPS, clock)


def _quietly(open_capture: Callable, target: int | str) -> Capture:
    """`open_capture(target)` without OpenCV's warnings (a failure is reported as a VideoError)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return open_capture(target)
    finally:
        cv2.utils.logging.setLogLevel(level)


class VideoWriter:
    """Writes RGB frames to a .mp4 or .avi file (WRITER_CODECS) at `fps`, opened at the first frame."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self._writer: cv2.VideoWriter | None = None

    def write(self, pixels: np.ndarray) -> None:
        if self._writer is None:
            codec = cv2.VideoWriter_fourcc(*WRITER_CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), codec, self.fps, (pixels.shape[1], pixels.shape[0]))
            if not self._writer.isOpened():
                raise VideoError(f"--annotate {self.path}: OpenCV cannot write this video")
        self._writer.write(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
