"""The runs: training (`train_and_evaluate`: train, evaluate each epoch, checkpoint, resume) and the
evaluation of a saved model (`evaluate_checkpoint`, `evaluate_bundle`).

The workdir holds `config.json` (the resolved config), `checkpoints/<step>/` (each a model bundle
with the run state it resumes from), `metrics.jsonl`, `summary.json` (best and last evaluation of
every eval set; see `workdir`), `tensorboard/`, `profile/` (the trace of config.profile_steps) and,
while a trainer runs there, its `lease.json` (one trainer per workdir; see `workdir`). Running
again in the same workdir resumes from its latest checkpoint with the same data order, so the run
continues exactly as an uninterrupted one would. On SIGTERM, or a first SIGINT, the trainer saves a
checkpoint at the next step and exits cleanly; a second SIGINT stops it at once (`PreemptionGuard`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from manet_jax import cli, storage
from manet_jax.bundle import CHECKPOINTS, BundleError, load_bundle
from manet_jax.errors import ConfigError, Interrupted, ManetError, Stopped, is_disk_full
from manet_jax.forward import module_for
from manet_jax.mesh import check_batch_size, make_mesh
from manet_jax.training.build import Setup, build, check_init_from
from manet_jax.training.checkpoints import Checkpoints, check_room
from manet_jax.training.config import eval_sets, profile_steps, save_config
from manet_jax.training.evaluation import Evaluator, GlobalBatches, evaluate_model, evaluate_set, find_eval_sets
from manet_jax.training.official import matching_curve
from manet_jax.training.record import MetricWriter, Reporter, RunSummary, check_outputs, write_outputs
from manet_jax.training.steps import TrainState
from manet_jax.training.workdir import (CONFIG_FILE, PROFILE, SUMMARY_FILE, Lease, check_held, check_workdir, hold,
                                        remove_temporary_files)


logger = logging.getLogger(__name__)


class NonFiniteLossError(ManetError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


class WorkdirFullError(ManetError, OSError):
    """The workdir's disk filled up during a run; the message names the file and the checkpoint to resume from."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` in `workdir`; returns the run summary `{'ranked_by', 'best', 'last'}`
    (and `official` for a run of an official recipe; see `record.RunSummary`).

    Evaluates every `eval_every_epochs` and checkpoints every `checkpoint_every_epochs` (and at
    the end); on SIGTERM saves a checkpoint and returns early; on a first SIGINT (Ctrl-C) saves one
    and raises `errors.Interrupted` (a KeyboardInterrupt), on a second leaves it to the handler from
    before (`PreemptionGuard`); either signal before the first step raises
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


DEFAULT_BATCH_SIZE = 64  # without a config: rounded up to a multiple of the number of devices


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, output_dir: str | None = None, *,
                        class_map: Mapping[str, str | None] | None = None, summary: str | None = None,
                        predictions: str | None = None) -> dict[str, dict[str, Any]]:
    """Evaluates a model (a bundle, or a trainer workdir's best checkpoint) on every eval set of
    `config` (config.eval_dataset, else the splits of config.dataset) as a run of `config` would:
    classes matched by name (and `class_map`), those the model lacks left out. Writes the outputs
    (`write_outputs`; default output_dir: `<checkpoint>/eval`, checked before the evaluation)
    once every set is evaluated. Returns the results per eval set."""
    setup = build(config)
    bundle = load_bundle(checkpoint)
    info = setup.info
    if bundle.spec.num_classes != info.num_classes:
        raise BundleError(f"{checkpoint} has {bundle.spec.num_classes}-way heads but {config.dataset} has "
                          f"{info.num_classes} classes; pass the config of the dataset it was trained on")
    if bundle.spec.multiscale_wiring != setup.spec.multiscale_wiring:
        raise BundleError(f"{checkpoint} holds a model of the {bundle.spec.multiscale_wiring} multi-scale wiring; "
                          f"evaluate it with --config.multiscale_wiring={bundle.spec.multiscale_wiring}")
    if bundle.spec.class_names != info.class_names:
        logger.warning("%s was trained on classes %s; %s has %s", checkpoint, list(bundle.spec.class_names),
                       config.dataset, list(info.class_names))
    sets = find_eval_sets(eval_sets(config), bundle.spec.class_names, config.data_dir,
                          f"config.eval_dataset={config.eval_dataset!r}", class_map=class_map, leave_out=True)
    output_dir = check_outputs(sets, output_dir or epath.Path(checkpoint) / "eval", summary, predictions)
    evaluator = dataclasses.replace(setup.evaluator, predictions=predictions is not None)
    evaluations = evaluate_model(evaluator, bundle, sets, str(checkpoint))
    return write_outputs(evaluations, output_dir, config.data_dir, summary, predictions)


def evaluate_bundle(checkpoint: str, sets: Sequence[tuple[str, str | None]], output_dir: str | None = None, *,
                    data_dir: str | None = None, batch_size: int | None = None,
                    class_map: Mapping[str, str | None] | None = None, summary: str | None = None,
                    predictions: str | None = None) -> dict[str, dict[str, Any]]:
    """Evaluates a model on `sets` ((dataset, split or None: the one the paper reports on)) with
    no config: image size, wiring, dtype, beta and classes come from the model's header; only the
    eval sets are read (a generated dataset is generated). Every dataset class must count as a
    model class, by name or by `class_map` (None: left out). Global batches of `batch_size`
    (default: DEFAULT_BATCH_SIZE rounded up to a multiple of the devices). Writes the outputs
    (`write_outputs`; default output_dir: `<checkpoint>/eval`, checked before the evaluation)
    once every set is evaluated. Returns the results per eval set."""
    bundle = load_bundle(checkpoint)
    spec = bundle.spec
    if spec.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(f"{checkpoint} computes in float64, which needs 64-bit JAX: set JAX_ENABLE_X64=1")
    mesh = make_mesh()
    batch_size = batch_size or -(-DEFAULT_BATCH_SIZE // mesh.size) * mesh.size
    check_batch_size(batch_size, mesh, "--batch-size")
    found = find_eval_sets(sets, spec.class_names, data_dir, "name each eval set once", class_map=class_map)
    output_dir = check_outputs(found, output_dir or epath.Path(checkpoint) / "eval", summary, predictions)
    evaluator = Evaluator(module_for(spec, mesh), spec.beta, mesh, spec.image_size, batch_size, data_dir,
                          predictions=predictions is not None)
    evaluations = evaluate_model(evaluator, bundle, found, str(checkpoint))
    return write_outputs(evaluations, output_dir, data_dir, summary, predictions)
