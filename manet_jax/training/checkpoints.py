"""Trainer checkpoints: an Orbax CheckpointManager in `<workdir>/checkpoints/<step>/`, the room on
disk for them, and the checks that name what is wrong with one that cannot be restored.

Each checkpoint is a model bundle (`variables/`, `header/`; see `manet_jax.bundle`) plus the run
state it resumes from: `train_state/` (step and optimizer state) and `host_state/` (JSON: the
best and last evaluation so far, ...), its arrays uncompressed (`arrays_handler`). Writes are
asynchronous; the latest `keep` checkpoints are kept, plus the best by eval accuracy
(`bundle.best_step`). A checkpoint that cannot be restored
is moved to `<workdir>/checkpoints_corrupt/` when an older one restores, so the run goes on from
there; one whose arrays differ from the config's is reported array by array, one with an array
that cannot be read in full by that array (read one by one with tensorstore once the restore has
failed, so that a resume reads each checkpoint once). Each check names what is wrong (a file, an
array), where Orbax's own errors name no key or come as unawaited reads reported with tracebacks.

A full disk is caught before anything is written: `check_room` (before a run starts) and each
save compare the disk's free space (`storage.free_bytes`) with a checkpoint's size (its arrays'
bytes, `bundle.state_bytes`, or the last complete checkpoint's size on disk if larger) plus a
margin (`storage.with_margin`), and raise CheckpointSaveError naming what is needed, what is free
and the last complete checkpoint. A write that fails all the same is reported by the next
`check`, `save` or `wait` as such an error, and its unfinished folder is removed. Given the
workdir's lease, a save first checks that this trainer still holds it (`workdir.check_held`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from manet_jax import storage
from manet_jax.bundle import (HEADER, HEADER_FILE, LEGACY_STATE, METRIC, VARIABLES, ModelSpec, absolute_path, best_step,
                              state_bytes)
from manet_jax.errors import ManetError, is_disk_full
from manet_jax.storage import free_bytes, megabytes, settled, with_margin
from manet_jax.training.steps import TrainState
from manet_jax.training.workdir import Lease, check_held


TRAIN_STATE, HOST_STATE = "train_state", "host_state"  # the Orbax items of a checkpoint's run state
CORRUPT = "checkpoints_corrupt"  # beside the checkpoints directory
UNFINISHED = f"*{ocp.path.atomicity.TMP_DIR_SUFFIX}*"  # a write in progress, or one that never finished
# A checkpoint's small JSON files, which Orbax reads outside any restore (the metrics as it opens
# the directory), and whether every checkpoint has one.
JSON_FILES = {"_CHECKPOINT_METADATA": True, f"{HEADER}/{HEADER_FILE}": True, f"{HOST_STATE}/metadata": True,
              "metrics/metrics": False}
# An array's metadata key in an item's OCDBT database (Orbax's layout) -> tensorstore's driver for it.
ARRAY_DRIVERS = {".zarray": "zarr", "zarr.json": "zarr3"}

logger = logging.getLogger(__name__)


class CheckpointSaveError(ManetError, OSError):
    """A checkpoint could not be written; the message names the cause and the last complete one."""


def check_room(directory: epath.PathLike, state: Any) -> None:
    """Raises CheckpointSaveError, before a run starts, if the disk of `directory` has no room for a
    checkpoint of `state` (arrays or abstract arrays), as a save would find later."""
    directory = absolute_path(directory)
    free, size = free_bytes(directory), state_bytes(state)
    if free is not None and free < with_margin(size):
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
        raise CheckpointSaveError(no_space("checkpoints cannot be written to", directory, size, free,
                                            resume_hint(directory, max(steps, default=None))))


def bytes_on_disk(directory: epath.Path) -> int:
    """The size of the files under a local `directory` (0 for a bucket)."""
    if storage.is_url(directory):
        return 0
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names)


def no_space(what: str, directory: epath.Path, size: int | None, free: int | None, hint: str) -> str:
    """'<what> <directory>: no space left on device (a checkpoint needs X MB; Y MB free now); <hint>'."""
    needs = "" if size is None else f"a checkpoint needs {megabytes(size)}"
    room = "; ".join(filter(None, [needs, None if free is None else f"{megabytes(free)} free now"]))
    return f"{what} {directory}: no space left on device{room and f' ({room})'}; {hint}"


def resume_hint(directory: epath.Path, latest: int | None) -> str:
    """Where a run stopped by an error resumes from (checkpoint `latest` in `directory`)."""
    if latest is None:
        return "no checkpoint was saved: run the same command to start again once the cause is fixed"
    return (f"the last complete checkpoint is {directory / str(latest)}: run the same command to resume from it "
            "once the cause is fixed")


class CheckpointDamagedError(ValueError):
    """An array of a checkpoint cannot be read in full; the message names the array and the error."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays differ in shape or dtype from the state they would restore into."""


def json_problem(step_directory: epath.Path) -> str | None:
    """What is wrong with a checkpoint's JSON files (a missing one, one that does not parse), if anything."""
    for name, required in JSON_FILES.items():
        path = step_directory / name
        if not path.exists():
            if required:
                return f"{name} is missing"
            continue
        try:
            json.loads(path.read_text())
        except ValueError as e:
            return f"{name} is damaged: {e}"
    return None


def check_readable(checkpoint: epath.Path, items: Sequence[str]) -> None:
    """Raises CheckpointDamagedError naming the first array of `items` (Orbax items of arrays, each
    an OCDBT database of zarr arrays) whose data cannot be read in full: after a failed restore,
    whose error does not name the array. Read one by one with tensorstore, each read awaited."""
    for item in items:
        database = {"driver": "ocdbt", "base": str(checkpoint / item).rstrip("/") + "/"}
        if "://" not in database["base"]:
            database["base"] = "file://" + database["base"]
        array = ""
        try:
            for key in sorted(key.decode() for key in ts.KvStore.open(database).result().list().result()):
                array, _, name = key.rpartition("/")
                if name in ARRAY_DRIVERS:
                    spec = {"driver": ARRAY_DRIVERS[name], "kvstore": {**database, "path": f"{array}/"}}
                    ts.open(spec, open=True, read=True).result().read().result()
        except Exception as e:  # tensorstore's ValueError, or an OSError
            where = f"{item}/{array}" if array else item
            raise CheckpointDamagedError(f"{where} is damaged: {str(e).strip().splitlines()[0]}") from e


def check_matches(saved: Any, target: Any, shown: int = 5) -> None:
    """Raises CheckpointMismatchError naming the arrays whose shape or dtype differ between a
    checkpoint's metadata and the target (checked before restoring: Orbax's own error names no key)."""
    def arrays(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {jax.tree_util.keystr(path, simple=True, separator="/"): (tuple(leaf.shape), np.dtype(leaf.dtype))
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    ours, theirs = arrays(target), arrays(saved)
    differences = [f"{key}: only in the checkpoint" for key in sorted(theirs.keys() - ours.keys())]
    differences += [f"{key}: not in the checkpoint" for key in sorted(ours.keys() - theirs.keys())]
    differences += [f"{key}: checkpoint {theirs[key][0]} {theirs[key][1]}, this config {ours[key][0]} {ours[key][1]}"
                    for key in ours if key in theirs and ours[key] != theirs[key]]  # in the state's order
    if differences:
        more = f"; and {len(differences) - shown} more" if len(differences) > shown else ""
        raise CheckpointMismatchError(f"{len(differences)} array(s) differ from this config: "
                                      + "; ".join(differences[:shown]) + more)


class CheckpointRestoreError(ManetError, RuntimeError):
    """No checkpoint in a directory can be restored; the message lists each one's error."""


@dataclasses.dataclass
class KeepBest(checkpoint_managers.PreservationPolicy):
    """Preserves the best checkpoint by eval accuracy, as `bundle.best_step` picks it."""

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        best = best_step((c.step, (c.metrics or {}).get(METRIC)) for c in checkpoints)
        return [c.step == best for c in checkpoints]


def arrays_handler() -> ocp.PyTreeCheckpointHandler:
    """The handler of a checkpoint's arrays: Orbax's standard layout (OCDBT) without its default
    zstd compression, which saves about 7% of float32 weights' and momenta's bytes and costs the
    step loop a fifth of each save where the cores that train also write (docs/benchmarks,
    "Checkpoint saves"). Checkpoints written compressed restore all the same."""
    return ocp.PyTreeCheckpointHandler(use_compression=False)


def restore_into(target: Any) -> ocp.args.PyTreeRestore:
    """Orbax's arguments to restore a tree of arrays as `target` (abstract arrays with shardings)."""
    return ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


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
            VARIABLES: arrays_handler(), HEADER: ocp.JsonCheckpointHandler(filename=HEADER_FILE),
            TRAIN_STATE: arrays_handler(), HOST_STATE: ocp.JsonCheckpointHandler()})

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
                VARIABLES: ocp.args.PyTreeSave(state.variables), HEADER: ocp.args.JsonSave(spec.to_json()),
                TRAIN_STATE: ocp.args.PyTreeSave(state.run_state), HOST_STATE: ocp.args.JsonSave(host_state)}),
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
        """Where a run stopped by an error resumes from, once the error's cause is fixed: the latest
        checkpoint but one being written (which Orbax counts among its steps from the start)."""
        steps = self.manager.all_steps()
        if self._saving is not None and self.manager.is_saving_in_progress():
            steps = [step for step in steps if step != self._saving]
        return resume_hint(self.directory, max(steps, default=None))

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
                        VARIABLES: restore_into(target.variables), TRAIN_STATE: restore_into(target.run_state),
                        HOST_STATE: ocp.args.JsonRestore()}))
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
