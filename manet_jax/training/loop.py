"""The training loop: train, evaluate each epoch, checkpoint, resume (`train_and_evaluate`).

The workdir holds `config.json` (the resolved config), `checkpoints/<step>/` (each a model bundle
with the run state it resumes from), `metrics.jsonl`, `summary.json` (best and last evaluation of
every eval set; see `workdir`), `tensorboard/`, `profile/` (the trace of config.profile_steps) and,
while a trainer runs there, its `lease.json` (one trainer per workdir; see `lease`). Running again
in the same workdir resumes from its latest checkpoint with the same data order, so the run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from manet_jax import storage
from manet_jax.bundle import CHECKPOINTS
from manet_jax.errors import Interrupted, ManetError, Stopped, is_disk_full
from manet_jax.training.build import Setup, build
from manet_jax.training.checkpointing import Checkpoints
from manet_jax.training.config import profile_steps, save_config
from manet_jax.training.disk_space import check_room
from manet_jax.training.eval_sets import GlobalBatches
from manet_jax.training.evaluation import evaluate_set
from manet_jax.training.initialisation import check_init_from
from manet_jax.training.lease import Lease, check_held, hold
from manet_jax.training.metric_writer import MetricWriter
from manet_jax.training.official import matching_curve
from manet_jax.training.preemption import PreemptionGuard
from manet_jax.training.reporter import Reporter
from manet_jax.training.run_summary import RunSummary
from manet_jax.training.state import TrainState
from manet_jax.training.workdir import (CONFIG_FILE, PROFILE, SUMMARY_FILE, check_workdir,
                                       remove_temporary_files)

logger = logging.getLogger(__name__)


class NonFiniteLossError(ManetError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


class WorkdirFullError(ManetError, OSError):
    """The workdir's disk filled up during a run; the message names the file and the checkpoint to resume from."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` in `workdir`; returns the run summary `{'ranked_by', 'best', 'last'}`
    (and `official` for a run of an official recipe; see `run_summary`).

    Evaluates every `eval_every_epochs` and checkpoints every `checkpoint_every_epochs` (and at
    the end); on SIGTERM saves a checkpoint and returns early; on a first SIGINT (Ctrl-C) saves one
    and raises `errors.Interrupted` (a KeyboardInterrupt), on a second leaves it to the handler from
    before (`preemption.PreemptionGuard`); either signal before the first step raises
    `errors.Stopped`, with nothing saved. Raises NonFiniteLossError, naming the step, when the loss
    stops being finite (the checkpoints saved before stay as they are), CheckpointSaveError before
    the first step when the disk has no room for a checkpoint, WorkdirFullError or
    CheckpointSaveError when it fills up, and WorkdirBusyError, naming the other trainer, when one
    holds the workdir's lease. A workdir it must not write to (`workdir.check_workdir`), a
    config.init_from that is no model, or a disk without room for one checkpoint is refused before
    anything is written.
    """
    check_workdir(workdir)
    setup, workdir = build(config), epath.Path(workdir)
    if not (workdir / CHECKPOINTS).exists():  # a new run: its weights are read after the workdir is made
        check_init_from(config.init_from)
    check_room(workdir / CHECKPOINTS, setup.abstract_state())  # a disk without room for one checkpoint
    with PreemptionGuard() as preemption, hold(workdir) as lease:  # signals from here on are saved or stop safely
        trainer = Trainer(setup, workdir, lease, preemption)
        try:
            summary = trainer.run()
        except BaseException:
            trainer.close(failing=True)
            raise
        trainer.close()
        return summary


class Trainer:
    """One training run in a workdir whose `lease` process 0 holds (None on the other processes):
    the step loop, which hands the run's bookkeeping to a RunSummary, what it shows to a Reporter
    (through a MetricWriter) and its checkpoints to Checkpoints; each of those checks the lease
    before it writes to the workdir."""

    def __init__(self, setup: Setup, workdir: epath.Path, lease: Lease | None, preemption: PreemptionGuard):
        self.setup, self.config, self.workdir, self.preemption = setup, setup.config, workdir, preemption
        is_main = jax.process_index() == 0
        if is_main:
            remove_temporary_files(workdir, in_use=[lease.path.name] if lease else [])
            changed = save_config(self.config, workdir / CONFIG_FILE)
            if changed:
                logger.warning("config keys changed since this workdir's last run: %s", ", ".join(changed))
        self.checkpoints = Checkpoints(workdir / CHECKPOINTS, self.config.keep_checkpoints, lease)
        self.writer = MetricWriter(workdir, enabled=is_main, lease=lease)
        self.reporter = Reporter(setup, self.writer)
        self.summary = RunSummary(setup.eval_sets[0].name, workdir / SUMMARY_FILE, enabled=is_main, lease=lease,
                                  curve=matching_curve(self.config))
        self.trace = StepTrace(profile_steps(self.config), workdir / PROFILE, lease)

    def initial_state(self) -> TrainState:
        """The latest checkpoint's state (and bookkeeping), else a fresh one from config.init_from."""
        restored = self.checkpoints.restore_latest(self.setup.abstract_state())
        if restored is None:
            return self.setup.initial_state()
        state, host_state = restored
        self.summary.resume(host_state, self.config.dataset, self.workdir)
        logger.info("resuming from checkpoint %d in %s", int(state.step), self.checkpoints.directory)
        return state

    def run(self) -> dict[str, Any]:
        """Trains to the end (or a preemption); returns the summary. A full disk stops the run with a
        WorkdirFullError, or the CheckpointSaveError of a checkpoint write it made fail; a bucket
        that can no longer be reached with a StorageError naming it."""
        try:
            return self._train()
        except Exception as e:
            if storage.is_url(self.workdir) and storage.unreachable(e):
                bucket = storage.bucket_and_name(self.workdir)[0]
                raise storage.StorageError(f"{storage.explain(e, bucket)}; {self.checkpoints.resume_hint()}") from e
            if isinstance(e, ManetError) or not is_disk_full(e):
                raise
            self.checkpoints.wait()  # a checkpoint being written when the disk filled is the error to report
            written, free = getattr(e, "filename", None) or self.workdir, self.checkpoints.free_now()
            raise WorkdirFullError(f"{written} could not be written: no space left on device{free and f' ({free})'}; "
                                   f"{self.checkpoints.resume_hint()}") from e

    def _train(self) -> dict[str, Any]:
        """The step loop: train, report every config.log_every_steps, end each epoch, stop when preempted."""
        setup, state = self.setup, self.initial_state()
        start = int(state.step)
        self.writer.truncate(start)
        if start >= setup.total_steps:
            logger.info("%s is already trained (step %d)", self.workdir, start)
            return self.summary.to_json()
        if self.preemption.signal:  # before the first step: nothing new to save
            raise Stopped(self.preemption.signal)
        self.reporter.plan(start)
        batches, pending = setup.train_batches(start), []  # pending: device metrics since the last report
        for done in range(start + 1, setup.total_steps + 1):
            self.trace.before(done)
            state = self._step(state, batches, pending)
            self.trace.after(done, state)
            epoch_done, preempted = done % setup.steps_per_epoch == 0, self.preemption.reached(done)
            if done % self.config.log_every_steps == 0 or epoch_done or preempted:
                self._report_train(pending, done)
            if epoch_done:
                self._end_epoch(state, done)
            if preempted:
                return self._stop(state, done, self.preemption.signal)
        self.checkpoints.wait()
        self.reporter.done(self.summary)
        return self.summary.to_json()

    def close(self, failing: bool = False) -> None:
        """Waits for checkpoint writes and closes the writers. While the run's own error is being
        raised, a writer's last write failing too (the same full disk or lost bucket) is only logged."""
        self.trace.discard()
        self.checkpoints.close()
        try:
            self.writer.close()
        except Exception as e:
            if not failing:
                raise
            logger.debug("the metric writer's last write failed too: %s", e)

    def _step(self, state: TrainState, batches: GlobalBatches, pending: list[dict[str, jax.Array]]) -> TrainState:
        """One train step, its metrics added to `pending`; at most two steps in flight, for a prompt
        stop on SIGTERM and honest timings. A failed background checkpoint write stops the run first."""
        self.checkpoints.check()
        state, metrics = self.setup.train_step(state, next(batches))
        pending.append(metrics)
        if len(pending) > 1:
            pending[-2]["loss"].block_until_ready()
        return state

    def _report_train(self, pending: list[dict[str, jax.Array]], done: int) -> None:
        """Fetches the pending steps' metrics (emptying `pending`), checks their losses, and hands
        them to the summary and the reporter."""
        window = [{key: float(value) for key, value in m.items()} for m in jax.device_get(pending)]
        pending.clear()
        for i, metrics in enumerate(window):
            if not np.isfinite(metrics["loss"]):
                self._stop_non_finite(metrics["loss"], done - len(window) + i + 1)
        self.summary.add_train(window)
        self.reporter.train(window, done)

    def _stop_non_finite(self, loss: float, step: int) -> None:
        latest = self.checkpoints.latest_step()
        kept = (f"the last checkpoint, step {latest}, stays in {self.checkpoints.directory}" if latest
                else "no checkpoint was saved")
        raise NonFiniteLossError(
            f"the training loss is {loss} at step {step}; stopped without saving ({kept}). Try a lower "
            "config.learning_rate, or check config.init_from and the data.")

    def _end_epoch(self, state: TrainState, done: int) -> None:
        """Evaluates, reports the epoch (and the summary) and checkpoints, as often as the config says."""
        setup = self.setup
        epoch, last = done // setup.steps_per_epoch, done == setup.total_steps
        accuracy = None
        if epoch % self.config.eval_every_epochs == 0 or last:
            results = {s.name: evaluate_set(setup.evaluator, state.variables, s).results for s in setup.eval_sets}
            accuracy = self.summary.add_evaluation(epoch, done, results)
        self.reporter.epoch(epoch, done, self.summary.take_epoch_metrics(), self.summary)
        if epoch % self.config.checkpoint_every_epochs == 0 or last:
            self.checkpoints.save(done, state, setup.spec, self.summary.host_state(), accuracy)
        self.reporter.progress.skip()

    def _stop(self, state: TrainState, done: int, signum: signal.Signals) -> dict[str, Any]:
        """Saves a checkpoint at step `done` (unless there is one) and stops: returns the summary
        after SIGTERM, raises Interrupted after SIGINT (Ctrl-C)."""
        if self.checkpoints.latest_step() != done:
            self.checkpoints.save(done, state, self.setup.spec, self.summary.host_state())
        self.checkpoints.wait()
        if signum == signal.SIGINT:
            logger.warning("interrupted (Ctrl-C) at step %d: checkpoint saved in %s; run the same command to "
                           "resume", done, self.checkpoints.directory)
            raise Interrupted(f"interrupted at step {done}")
        logger.warning("preempted at step %d: checkpoint saved in %s; run the same command to resume",
                       done, self.checkpoints.directory)
        return self.summary.to_json()


class StepTrace:
    """A JAX profiler trace of the steps `steps` (first, last; config.profile_steps), for TensorBoard's
    profile tab in `directory`. Recorded into a local temporary folder and copied through the
    storage layer once the last step has run (the profiler's own writer reaches no bucket but
    Google's); each process writes its host's file."""

    def __init__(self, steps: tuple[int, int] | None, directory: epath.Path, lease: Lease | None):
        self.steps, self.directory, self.lease, self._local = steps, directory, lease, None

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0]:
            self._local = Path(tempfile.mkdtemp(prefix="manet-profile-"))
            jax.profiler.start_trace(str(self._local))

    def after(self, step: int, state: TrainState) -> None:
        if self._local is None or step != self.steps[1]:
            return
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        local, self._local = self._local, None
        try:
            check_held(self.lease)
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    target = self.directory / path.relative_to(local)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    storage.replace_bytes(target, path.read_bytes())
        finally:
            shutil.rmtree(local, ignore_errors=True)
        logger.info("profile of steps %d..%d in %s (TensorBoard's profile tab)", *self.steps, self.directory)

    def discard(self) -> None:
        """Stops a trace that the run left unfinished (it stopped before the last step) and drops it."""
        if self._local is not None:
            jax.profiler.stop_trace()
            shutil.rmtree(self._local, ignore_errors=True)
            self._local = None
