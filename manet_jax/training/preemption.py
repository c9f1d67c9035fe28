"""Preemption: on SIGTERM the trainer saves a checkpoint at the next step and exits cleanly."""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)


class PreemptionGuard:
    """`reached(step)` turns True once SIGTERM has arrived.

    One process: a SIGTERM handler (installed while the guard is entered) sets a flag. Several
    processes: JAX's preemption sync point, which `jax.distributed` arms for SIGTERM and which
    makes every process stop at the same step.
    """

    def __init__(self):
        self._requested = False
        self._previous = None

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame) -> None:
        logger.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
        self._requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested
