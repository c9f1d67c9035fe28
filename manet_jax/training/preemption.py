"""Preemption and Ctrl-C: on SIGTERM, or a first SIGINT, the trainer saves a checkpoint at the
next step and exits cleanly; a second SIGINT stops it at once."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

from manet_jax import cli

logger = logging.getLogger(__name__)


class PreemptionGuard:
    """`reached(step)` turns True once SIGTERM or SIGINT (Ctrl-C) has arrived; `signal` is which.

    One process: handlers of SIGTERM and SIGINT (installed while the guard is entered; SIGINT's only
    where it is not ignored, as in a background job) that only record the signal, inside the tools'
    `cli.deferring_signals`. The first SIGINT puts back the handler from before (the tools' own,
    where a second SIGINT ends the process at once; elsewhere Python's KeyboardInterrupt).
    Several processes: JAX's preemption sync point, which `jax.distributed` arms for SIGTERM and
    which makes every process stop at the same step; SIGINT is left as it is.
    """

    def __init__(self):
        self.signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._deferral = contextlib.ExitStack()
        self._announced = False

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._deferral.enter_context(cli.deferring_signals())
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        self._deferral.close()

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signum, self._previous.pop(signal.SIGINT))
        self.signal = self.signal or signal.Signals(signum)

    def reached(self, step: int) -> bool:
        """Whether to stop after `step`; says so in the log the first time."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        if self.signal is not None and not self._announced:
            self._announced = True
            if self.signal == signal.SIGINT:
                logger.warning("SIGINT (Ctrl-C): saving a checkpoint at step %d, then exiting; Ctrl-C again stops "
                               "at once, without it", step)
            else:
                logger.warning("SIGTERM: saving a checkpoint at step %d, then exiting", step)
        return self.signal is not None
