"""The training loop: train, evaluate each epoch, checkpoint, resume (`train_and_evaluate`).

The workdir holds `config.json` (the resolved config), `checkpoints/<step>/` (each a model bundle
with the run state it resumes from), `metrics.jsonl`, `summary.json` (best and last evaluation of
every eval set; see `workdir`), `tensorboard/` and, while a trainer runs there, its `lease.json`
(one trainer per workdir; see `lease`). Running again in the same workdir resumes from its latest
checkpoint with the same data order, so the run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from manet_jax.bundle import CHECKPOINTS, best_step
from manet_jax.errors import ConfigError, Interrupted, ManetError, is_disk_full
from manet_jax.training.build import Setup, build
from manet_jax.training.checkpointing import Checkpoints, check_room
from manet_jax.training.config import save_config
from manet_jax.training.evaluation import confusion_figure, describe, evaluate_set, figure_title
from manet_jax.training.initialisation import check_init_from
from manet_jax.training.lease import Lease, hold
from manet_jax.training.metric_writer import MetricWriter
from manet_jax.training.metrics import mean_train_metrics
from manet_jax.training.preemption import PreemptionGuard
from manet_jax.training.progress import Progress, format_duration
from manet_jax.training.state import TrainState
from manet_jax.training.workdir import (CONFIG_FILE, SUMMARY_FILE, check_workdir, remove_temporary_files, replace_text,
                                       upgraded)

logger = logging.getLogger(__name__)


class NonFiniteLossError(ManetError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


class WorkdirFullError(ManetError, OSError):
    """The workdir's disk filled up during a run; the message names the file and the checkpoint to resume from."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` in `workdir`; returns the run summary `{'ranked_by', 'best', 'last'}`.

    Evaluates every `eval_every_epochs` and checkpoints every `checkpoint_every_epochs` (and at
    the end); on SIGTERM saves a checkpoint and returns early; on a first SIGINT (Ctrl-C) saves one
    and raises `errors.Interrupted` (a KeyboardInterrupt), on a second raises KeyboardInterrupt at
    once. Raises NonFiniteLossError, naming the step, when the loss stops being finite (the
    checkpoints saved before stay as they are), CheckpointSaveError before the first step when the
    disk has no room for a checkpoint, WorkdirFullError or CheckpointSaveError when it fills up, and
    WorkdirBusyError, naming the other trainer, when one holds the workdir's lease. A workdir it
    must not write to (`workdir.check_workdir`), a config.init_from that is no model, or a disk
    without room for one checkpoint is refused before anything is written.
    """
    check_workdir(workdir)
    setup, workdir = build(config), epath.Path(workdir)
    if not (workdir / CHECKPOINTS).exists():  # a new run: its weights are read after the workdir is made
        check_init_from(config.init_from)
    check_room(workdir / CHECKPOINTS, setup.abstract_state())  # a disk without room for one checkpoint
    with hold(workdir) as lease:
        trainer = Trainer(setup, workdir, lease)
        try:
            return trainer.run()
        finally:
            trainer.close()


class Trainer:
    """One training run: its setup, checkpoints, metric writer and progress, in a workdir whose
    `lease` process 0 holds (None on the other processes)."""

    def __init__(self, setup: Setup, workdir: epath.Path, lease: Lease | None):
        self.setup, self.config, self.workdir, self.lease = setup, setup.config, workdir, lease
        self.is_main = jax.process_index() == 0
        if self.is_main:
            remove_temporary_files(workdir, in_use=[lease.path.name] if lease else [])
            changed = save_config(self.config, workdir / CONFIG_FILE)
            if changed:
                logger.warning("config keys changed since this workdir's last run: %s", ", ".join(changed))
        self.checkpoints = Checkpoints(workdir / CHECKPOINTS, self.config.keep_checkpoints)
        self.writer = MetricWriter(workdir, enabled=self.is_main)
        self.progress = Progress(setup.total_steps, self.config.batch_size)
        self.summary: dict[str, Any] = {"ranked_by": setup.eval_sets[0].name, "best": None, "last": None}
        self.epoch_metrics: list[dict[str, float]] = []  # host metrics of this epoch's steps so far

    def initial_state(self) -> TrainState:
        """The latest checkpoint's state (and host state), else a fresh one from config.init_from."""
        restored = self.checkpoints.restore_latest(self.setup.abstract_state())
        if restored is None:
            return self.setup.initial_state()
        state, host_state = restored
        summary = upgraded(host_state["summary"], self.config.dataset)
        if summary["ranked_by"] not in (None, self.summary["ranked_by"]):
            raise ConfigError(f"{self.workdir} ranks its checkpoints by {summary['ranked_by']}, this config by "
                              f"{self.summary['ranked_by']} (its first eval set); resume with the eval sets it was "
                              "started with (config.eval_dataset), or use a new workdir")
        self.summary.update(best=summary["best"], last=summary["last"])
        self.epoch_metrics = host_state["epoch_metrics"]
        logger.info("resuming from checkpoint %d in %s", int(state.step), self.checkpoints.directory)
        return state

    def run(self) -> dict[str, Any]:
        """Trains to the end (or a preemption); returns the summary. A full disk stops the run with a
        WorkdirFullError, or the CheckpointSaveError of a checkpoint write it made fail."""
        try:
            return self._train()
        except Exception as e:
            if isinstance(e, ManetError) or not is_disk_full(e):
                raise
            self.checkpoints.wait()  # a checkpoint being written when the disk filled is the error to report
            written, free = getattr(e, "filename", None) or self.workdir, self.checkpoints.free_now()
            raise WorkdirFullError(f"{written} could not be written: no space left on device{free and f' ({free})'}; "
                                   f"{self.checkpoints.resume_hint()}") from e

    def _train(self) -> dict[str, Any]:
        setup = self.setup
        state = self.initial_state()
        start = int(state.step)
        self._check_lease()
        self.writer.truncate(start)
        if start >= setup.total_steps:
            logger.info("%s is already trained (step %d)", self.workdir, start)
            return self.summary
        self._log_plan(start)
        batches = setup.train_batches(start)
        pending: list[dict[str, jax.Array]] = []  # device metrics since the last report
        with PreemptionGuard() as preemption:
            for step in range(start, setup.total_steps):
                self.checkpoints.check()  # a failed background write stops the run at once
                state, metrics = setup.train_step(state, next(batches))
                pending.append(metrics)
                if len(pending) > 1:  # at most two steps in flight: a prompt stop on SIGTERM, honest timings
                    pending[-2]["loss"].block_until_ready()
                done = step + 1
                epoch_done = done % setup.steps_per_epoch == 0
                preempted = preemption.reached(done)
                if done % self.config.log_every_steps == 0 or epoch_done or preempted:
                    self.epoch_metrics += self._report_train(pending, done)
                    pending = []
                if epoch_done:
                    self._end_epoch(state, done)
                if preempted:
                    if self.checkpoints.latest_step() != done:
                        self._check_lease()
                        self.checkpoints.save(done, state, setup.spec, self._host_state())
                    self.checkpoints.wait()
                    if preemption.signal == signal.SIGINT:
                        logger.warning("interrupted (Ctrl-C) at step %d: checkpoint saved in %s; run the same "
                                       "command to resume", done, self.checkpoints.directory)
                        raise Interrupted(f"interrupted at step {done}")
                    logger.warning("preempted at step %d: checkpoint saved in %s; run the same command to resume",
                                   done, self.checkpoints.directory)
                    return self.summary
        self.checkpoints.wait()
        self._log_done()
        return self.summary

    def close(self) -> None:
        """Waits for checkpoint writes and closes the writers."""
        self.checkpoints.close()
        self.writer.close()

    def _check_lease(self) -> None:
        """Raises LeaseLostError, before a write to the workdir, if another trainer took the lease."""
        if self.lease is not None:
            self.lease.check()

    def _host_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the train state, so that a resumed run logs as this one."""
        return {"summary": self.summary, "epoch_metrics": self.epoch_metrics}

    def _report_train(self, pending: list[dict[str, jax.Array]], done: int) -> list[dict[str, float]]:
        """Fetches the pending steps' metrics, checks the losses, writes and logs their means."""
        window = [{key: float(value) for key, value in m.items()} for m in jax.device_get(pending)]
        for i, metrics in enumerate(window):
            if not np.isfinite(metrics["loss"]):
                self._stop_non_finite(metrics["loss"], done - len(window) + i + 1)
        images_per_second, seconds_left = self.progress.update(done)
        record = {"step": done, "epoch": done / self.setup.steps_per_epoch,
                  "train": mean_train_metrics(window, self.config.batch_size),
                  "learning_rate": float(self.setup.schedule(done - 1)), "images_per_second": images_per_second}
        self._check_lease()
        self.writer.write(record)
        if self.is_main:
            train = record["train"]
            speed = "compiled" if images_per_second is None else f"{images_per_second:.1f} img/s"
            logger.info("step %d/%d (epoch %.2f/%d) loss %.4f (local %.4f, global %.4f) train acc %.2f%% lr %.3g "
                        "| %s | ETA %s", done, self.setup.total_steps, record["epoch"], self.config.num_epochs,
                        train["loss"], train["loss_local"], train["loss_global"], 100 * train["accuracy"],
                        record["learning_rate"], speed, format_duration(seconds_left))
        return window

    def _stop_non_finite(self, loss: float, step: int) -> None:
        latest = self.checkpoints.latest_step()
        kept = (f"the last checkpoint, step {latest}, stays in {self.checkpoints.directory}" if latest
                else "no checkpoint was saved")
        raise NonFiniteLossError(
            f"the training loss is {loss} at step {step}; stopped without saving ({kept}). Try a lower "
            "config.learning_rate, or check config.init_from and the data.")

    def _end_epoch(self, state: TrainState, done: int) -> None:
        """Evaluates, writes the epoch's record and checkpoints, as often as the config says."""
        epoch, last = done // self.setup.steps_per_epoch, done == self.setup.total_steps
        accuracy = None
        if epoch % self.config.eval_every_epochs == 0 or last:
            accuracy = self._evaluate(state, epoch, done)
        self._report_epoch(epoch, done)
        self.epoch_metrics = []
        if epoch % self.config.checkpoint_every_epochs == 0 or last:
            self._check_lease()
            self.checkpoints.save(done, state, self.setup.spec, self._host_state(), accuracy)
        self.progress.skip()

    def _evaluate(self, state: TrainState, epoch: int, done: int) -> float:
        """Evaluates every eval set, updates the best and last entries; returns the accuracy that
        ranks the checkpoints (the first eval set's)."""
        setup = self.setup
        results = {s.name: evaluate_set(setup.evaluator, state.variables, s).results for s in setup.eval_sets}
        entry = {"epoch": epoch, "step": done, "eval": results}
        best, ranked_by = self.summary["best"], self.summary["ranked_by"]
        candidates = [(entry["step"], results[ranked_by]["fused"]["accuracy"])]
        if best is not None:
            candidates.append((best["step"], best["eval"][ranked_by]["fused"]["accuracy"]))
        if best_step(candidates) == done:
            self.summary["best"] = entry
        self.summary["last"] = entry
        return results[ranked_by]["fused"]["accuracy"]

    def _report_epoch(self, epoch: int, done: int) -> None:
        """Writes the epoch's record (train means, and the evaluation if there was one at this step)."""
        record: dict[str, Any] = {"step": done, "epoch": epoch,
                                  "train_epoch": mean_train_metrics(self.epoch_metrics, self.config.batch_size)}
        last, best, ranked_by = self.summary["last"], self.summary["best"], self.summary["ranked_by"]
        evaluated = last is not None and last["step"] == done
        if evaluated:
            record["eval"] = last["eval"]
            record["best"] = {"epoch": best["epoch"], "accuracy": best["eval"][ranked_by]["fused"]["accuracy"]}
        self._check_lease()
        self.writer.write(record)
        if not (self.is_main and evaluated):
            return
        for name, results in last["eval"].items():
            self.writer.write_figure(f"eval/{name}/fused/confusion_matrix", confusion_figure(
                results["fused"]["confusion_matrix"], self.setup.info.class_names, figure_title(results)), done)
        replace_text(self.workdir / SUMMARY_FILE, json.dumps(self.summary, indent=2) + "\n")
        lines = [f"epoch {epoch}/{self.config.num_epochs} {describe(name, results)}"
                 for name, results in last["eval"].items()]
        logger.info("%s; train accuracy %.2f%%; best %.2f%% at epoch %d%s", lines[0],
                    100 * record["train_epoch"]["accuracy"], 100 * record["best"]["accuracy"], best["epoch"],
                    "".join(f"\n  {line}" for line in lines[1:]))

    def _log_plan(self, start: int) -> None:
        if self.is_main:
            setup, info = self.setup, self.setup.info
            evaluated = ", ".join(f"{s.name} ({s.num_examples})" for s in setup.eval_sets)
            logger.info("%s: %d train examples, %d classes, evaluated on %s; steps %d..%d of batch %d (%d per "
                        "epoch) on %d device(s) in %d process(es)", self.config.dataset, info.splits[info.train_split],
                        info.num_classes, evaluated, start + 1, setup.total_steps, self.config.batch_size,
                        setup.steps_per_epoch, setup.mesh.size, jax.process_count())

    def _log_done(self) -> None:
        best, last, ranked_by = self.summary["best"], self.summary["last"], self.summary["ranked_by"]
        if self.is_main and best is not None:
            logger.info("done: %s accuracy best %.2f%% (epoch %d), last %.2f%% (epoch %d); summary in %s",
                        ranked_by, 100 * best["eval"][ranked_by]["fused"]["accuracy"], best["epoch"],
                        100 * last["eval"][ranked_by]["fused"]["accuracy"], last["epoch"],
                        self.workdir / SUMMARY_FILE)
