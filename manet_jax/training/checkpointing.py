"""Trainer checkpoints: an Orbax CheckpointManager in `<workdir>/checkpoints/<step>/`.

Each checkpoint is a model bundle (`variables/`, `header/`; see `manet_jax.bundle`) plus the run
state it resumes from: `train_state/` (step and optimizer state) and `host_state/` (JSON: the
best and last evaluation so far, ...). Writes are asynchronous; the latest `keep` checkpoints are
kept, plus the best by eval accuracy (`bundle.best_step`). A checkpoint that cannot be restored
is moved to `<workdir>/checkpoints_corrupt/` when an older one restores, so the run goes on from
there; one whose arrays differ from the config's is reported array by array, one with an array
that cannot be read in full by that array (read one by one with tensorstore once the restore has
failed, so that a resume reads each checkpoint once).
A full disk is caught before anything is written: each save checks the room on disk
(`disk_space`) and raises CheckpointSaveError naming what is needed, what is free and the last
complete checkpoint; the checks before a restore are in `checkpoint_checks`. A write that fails all the same is
reported by the next `check`, `save` or `wait` as such an error, and its unfinished folder is removed.
Given the workdir's lease, a save first checks that this trainer still holds it (`lease.check_held`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from manet_jax import storage
from manet_jax.bundle import (HEADER, HEADER_FILE, LEGACY_STATE, METRIC, VARIABLES, ModelSpec, absolute_path, best_step,
                              state_bytes)
from manet_jax.errors import ManetError, is_disk_full
from manet_jax.storage import free_bytes, megabytes, settled, with_margin
from manet_jax.training.checkpoint_checks import (HOST_STATE, CheckpointDamagedError, check_matches, check_readable,
                                                  json_problem)
from manet_jax.training.disk_space import CheckpointSaveError, bytes_on_disk, no_space, resume_hint
from manet_jax.training.lease import Lease, check_held
from manet_jax.training.state import TrainState

TRAIN_STATE = "train_state"
CORRUPT = "checkpoints_corrupt"  # beside the checkpoints directory
UNFINISHED = f"*{ocp.path.atomicity.TMP_DIR_SUFFIX}*"  # a write in progress, or one that never finished

logger = logging.getLogger(__name__)


class CheckpointRestoreError(ManetError, RuntimeError):
    """No checkpoint in a directory can be restored; the message lists each one's error."""


@dataclasses.dataclass
class KeepBest(checkpoint_managers.PreservationPolicy):
    """Preserves the best checkpoint by eval accuracy, as `bundle.best_step` picks it."""

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        best = best_step((c.step, (c.metrics or {}).get(METRIC)) for c in checkpoints)
        return [c.step == best for c in checkpoints]


class Checkpoints:
    """Save and restore train states, with the model's spec and the run's host state, in `directory`."""

    def __init__(self, directory: epath.PathLike, keep: int = 2, lease: Lease | None = None):
        """Opens `directory`, first removing unfinished writes and setting aside checkpoints with a
        damaged JSON file (Orbax would fail to open the directory on a damaged metrics file). Saves
        are made while this trainer holds `lease` (if given)."""
        self.directory, self.lease = absolute_path(directory), lease
        self._saving: int | None = None  # the step being written, until `wait` has seen it done
        self._size: int | None = None  # bytes of a checkpoint's arrays
        self._failed = False  # a write failed: its folder is removed again once Orbax's threads are done
        self._remove_unfinished()
        self._set_aside_damaged()
        policy = checkpoint_managers.AnyPreservationPolicy([checkpoint_managers.LatestN(keep), KeepBest()])
        options = ocp.CheckpointManagerOptions(  # Orbax writes a step's metrics only with a best_fn
            best_fn=lambda metrics: metrics[METRIC], best_mode="max", preservation_policy=policy,
            enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            VARIABLES: ocp.StandardCheckpointHandler(), HEADER: ocp.JsonCheckpointHandler(filename=HEADER_FILE),
            TRAIN_STATE: ocp.StandardCheckpointHandler(), HOST_STATE: ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: TrainState, spec: ModelSpec, host_state: dict,
             accuracy: float | None = None) -> None:
        """Starts writing checkpoint `step` (returns once the arrays are copied off the devices) after
        the previous write has finished; raises LeaseLostError if another trainer took the lease,
        CheckpointSaveError if the previous write failed, or, writing nothing, if the disk has no room
        for this one (`checkpoint_bytes` and a margin). Where the disk has room for less than two,
        waits for the write, so that a failure stops the run at once."""
        check_held(self.lease)
        self.wait()
        first, self._size = self._size is None, state_bytes(state)
        size, free = self.checkpoint_bytes(), free_bytes(self.directory)
        if free is not None and free < with_margin(size):
            raise CheckpointSaveError(no_space(f"checkpoint {step} could not be written to", self.directory, size,
                                                free, self.resume_hint()))
        tight = free is not None and free < 2 * with_margin(size)
        if tight and first:
            logger.warning("%s has %s free, less than two checkpoints (%s each): saves may fail for lack of space",
                           self.directory, megabytes(free), megabytes(size))
        self._saving = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**{
                VARIABLES: ocp.args.StandardSave(state.variables), HEADER: ocp.args.JsonSave(spec.to_json()),
                TRAIN_STATE: ocp.args.StandardSave(state.run_state), HOST_STATE: ocp.args.JsonSave(host_state)}),
                metrics=None if accuracy is None else {METRIC: accuracy})
        except Exception as e:  # the part written before save returns: directories, small files
            raise self._save_failed(e) from e
        if tight:
            self.wait()

    def checkpoint_bytes(self) -> int:
        """A checkpoint's size: its arrays' bytes, or the latest complete checkpoint's size on disk if larger."""
        latest = self.manager.latest_step()
        measured = 0 if latest is None else bytes_on_disk(self.directory / str(latest))
        return max(self._size or 0, measured)

    def check(self) -> None:
        """Raises CheckpointSaveError if the last write has failed; returns at once while it runs."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Blocks until pending writes are done; raises CheckpointSaveError if one failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # Orbax re-raises the writer thread's error (tensorstore's, an OSError, ...)
            raise self._save_failed(e) from e
        self._saving = None

    def _save_failed(self, error: Exception) -> CheckpointSaveError:
        """The error that reports the failed write of step `_saving` (one that fails although `save`
        found room: the disk filled up meanwhile), once its folder is removed."""
        step, self._saving, self._failed = self._saving, None, True
        self._remove_unfinished(after_failure=True)
        what = f"checkpoint {step} could not be written to"
        if is_disk_full(error):
            return CheckpointSaveError(no_space(what, self.directory, self.checkpoint_bytes(), free_bytes(self.directory),
                                                 self.resume_hint()))
        cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        return CheckpointSaveError(f"{what} {self.directory}: {cause}; {self.resume_hint()}")

    def resume_hint(self) -> str:
        """Where a run stopped by an error resumes from, once the error's cause is fixed."""
        return resume_hint(self.directory, self.manager.latest_step())

    def free_now(self) -> str:
        """'N MB free now' on the directory's disk ('' for a bucket)."""
        free = free_bytes(self.directory)
        return "" if free is None else f"{megabytes(free)} free now"

    def _remove_unfinished(self, after_failure: bool = False) -> None:
        """Deletes the folders of writes that did not finish (a killed run, a failed save): on a local
        disk Orbax's temporary folders, in a bucket step folders without Orbax's commit marker. After a
        failed write, Orbax stops waiting at the first item write that fails and leaves the others
        writing into its folder: it is removed once its files stop changing (`_settled`); if it still
        fails to go, it is left for `close` to remove, and never hides the write's error."""
        if jax.process_index() == 0 and self.directory.is_dir():
            unfinished = list(self.directory.glob(UNFINISHED))
            if storage.is_url(self.directory):  # a bucket's writes are not renamed: they lack a commit marker
                unfinished += [path for path in self.directory.iterdir()
                               if path.name.isdigit() and not ocp.path.step.is_path_finalized(path)]
            for path in unfinished:
                logger.warning("removing %s, left by a checkpoint write that did not finish", path)
                if after_failure:
                    settled(path)
                try:
                    path.rmtree()
                except OSError:
                    if not after_failure:
                        raise

    def _set_aside_damaged(self) -> None:
        """Moves checkpoints whose JSON files are missing or damaged aside when an intact one remains;
        raises CheckpointRestoreError, moving nothing, when none does."""
        steps = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()) \
            if self.directory.is_dir() else []
        damaged = {}
        for step in steps:
            if not (self.directory / str(step) / LEGACY_STATE).is_dir():  # restore_latest explains those
                problem = json_problem(self.directory / str(step))
                if problem:
                    damaged[step] = problem
        if damaged and len(damaged) == len(steps):
            lines = "\n".join(f"  {self.directory / str(s)}: {problem}" for s, problem in damaged.items())
            raise CheckpointRestoreError(f"no checkpoint in {self.directory} can be restored; use a new workdir or "
                                         f"fix the checkpoints:\n{lines}")
        self._move_aside(damaged)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, target: TrainState) -> tuple[TrainState, dict] | None:
        """(state, host state) of the newest checkpoint that restores into `target` (abstract arrays
        with shardings), or None when there is none. Newer checkpoints that fail are reported and
        moved aside, each with one warning; if none restores, raises CheckpointRestoreError and moves
        nothing."""
        failures = []
        for step in reversed(self.manager.all_steps()):
            if (self.directory / str(step) / LEGACY_STATE).is_dir():
                raise CheckpointRestoreError(
                    f"{self.directory / str(step)} was written by an older manet-jax (one `{LEGACY_STATE}` item) and "
                    f"cannot be resumed; start a new workdir with --config.init_from={self.directory.parent}")
            try:
                metadata = self.manager.item_metadata(step)
                check_matches(TrainState(**metadata[VARIABLES].tree, **metadata[TRAIN_STATE].tree), target)
                try:
                    restored = self.manager.restore(step, args=ocp.args.Composite(**{
                        VARIABLES: ocp.args.StandardRestore(target.variables),
                        TRAIN_STATE: ocp.args.StandardRestore(target.run_state), HOST_STATE: ocp.args.JsonRestore()}))
                except Exception:
                    check_readable(self.directory / str(step), (VARIABLES, TRAIN_STATE))  # names a damaged array
                    raise
            except Exception as e:  # Orbax raises many types for damaged or incompatible trees
                failures.append((step, e))
                continue
            if failures:
                self._move_aside({s: str(e) if isinstance(e, CheckpointDamagedError) else
                                  f"{type(e).__name__}: {str(e).splitlines()[0]}" for s, e in failures})
                self.manager.reload()
            state = TrainState(**restored[VARIABLES], **restored[TRAIN_STATE])
            return state, restored[HOST_STATE]
        if failures:
            lines = "\n".join(f"  {self.directory / str(s)}: {type(e).__name__}: {e}" for s, e in failures)
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} can be restored for this config (a different "
                f"dataset, class count or optimizer?); use a new workdir or fix the checkpoints:\n{lines}")
        return None

    def _move_aside(self, problems: dict[int, str]) -> None:
        """Moves the checkpoints of `problems` (step: why it cannot be restored) to CORRUPT (as
        `<step>`, or `<step>-2`, ... beside an earlier one), with one warning each."""
        if jax.process_index() == 0 and problems:
            corrupt = self.directory.parent / CORRUPT
            corrupt.mkdir(parents=True, exist_ok=True)
            for step, problem in problems.items():
                target = next(path for n in itertools.count(1)
                              if not (path := corrupt / (str(step) if n == 1 else f"{step}-{n}")).exists())
                self.directory.joinpath(str(step)).rename(target)
                logger.warning("checkpoint %s cannot be restored (%s); moved to %s", self.directory / str(step),
                               problem, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("manet_jax.checkpoints_moved_aside")

    def close(self) -> None:
        """Waits for Orbax's threads. After a failed write (already reported) its other tasks may
        still have been writing into the unfinished folder: it is removed again once they are done.
        A bucket that cannot be reached is left to the next run's start to clean up."""
        try:
            self.manager.close()
            if self._failed:
                self._remove_unfinished(after_failure=True)
        except Exception as e:  # reported already, or a bucket gone (reported by the run): resuming cleans up
            if not (self._failed or storage.unreachable(e)):
                raise
