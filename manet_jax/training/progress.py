"""Training progress: images per second and the time left."""

from __future__ import annotations

import time


class Progress:
    """Throughput over the last interval and an ETA from the mean time per step since the first
    report, so the first interval (which compiles the step) is left out and evaluation is counted."""

    def __init__(self, total_steps: int, batch_size: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    def update(self, step: int) -> tuple[float | None, float | None]:
        """(images per second since the last update, seconds left); None at the first update."""
        now = time.monotonic()
        last, self._last = self._last, (step, now)
        if last is None:
            self._first = self._last
            return None, None
        first_step, first_time = self._first
        seconds_left = (self.total_steps - step) * (now - first_time) / (step - first_step)
        return (step - last[0]) * self.batch_size / (now - last[1]), seconds_left

    def skip(self) -> None:
        """Leaves the time since the last update (evaluation, checkpointing) out of the next
        throughput; the ETA still counts it."""
        if self._last is not None:
            self._last = (self._last[0], time.monotonic())


def format_duration(seconds: float | None) -> str:
    """H:MM:SS, or '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
