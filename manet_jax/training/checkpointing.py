"""Trainer checkpoints: an Orbax CheckpointManager in `<workdir>/checkpoints/<step>/`.

Each checkpoint is a model bundle (`variables/`, `header/`; see `manet_jax.bundle`) plus the run
state it resumes from: `train_state/` (step and optimizer state) and `host_state/` (JSON: the
best and last evaluation so far, ...). Writes are asynchronous; the latest `keep` checkpoints are
kept, plus the best by eval accuracy (`bundle.best_step`). A checkpoint that cannot be restored
is moved to `<workdir>/checkpoints_corrupt/` when an older one restores, so the run goes on from
there; one whose arrays differ from the config's is reported array by array.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from manet_jax.bundle import HEADER, HEADER_FILE, LEGACY_STATE, METRIC, VARIABLES, ModelSpec, absolute_path, best_step
from manet_jax.errors import ManetError
from manet_jax.training.state import TrainState

TRAIN_STATE, HOST_STATE = "train_state", "host_state"
CORRUPT = "checkpoints_corrupt"  # beside the checkpoints directory

logger = logging.getLogger(__name__)


class CheckpointRestoreError(ManetError, RuntimeError):
    """No checkpoint in a directory can be restored; the message lists each one's error."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays differ in shape or dtype from the state they would restore into."""


@dataclasses.dataclass
class KeepBest(checkpoint_managers.PreservationPolicy):
    """Preserves the best checkpoint by eval accuracy, as `bundle.best_step` picks it."""

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> Sequence[bool]:
        best = best_step((c.step, (c.metrics or {}).get(METRIC)) for c in checkpoints)
        return [c.step == best for c in checkpoints]


class Checkpoints:
    """Save and restore train states, with the model's spec and the run's host state, in `directory`."""

    def __init__(self, directory: epath.PathLike, keep: int = 2):
        self.directory = absolute_path(directory)
        policy = checkpoint_managers.AnyPreservationPolicy([checkpoint_managers.LatestN(keep), KeepBest()])
        options = ocp.CheckpointManagerOptions(  # Orbax writes a step's metrics only with a best_fn
            best_fn=lambda metrics: metrics[METRIC], best_mode="max", preservation_policy=policy,
            enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            VARIABLES: ocp.StandardCheckpointHandler(), HEADER: ocp.JsonCheckpointHandler(filename=HEADER_FILE),
            TRAIN_STATE: ocp.StandardCheckpointHandler(), HOST_STATE: ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: TrainState, spec: ModelSpec, host_state: dict,
             accuracy: float | None = None) -> None:
        """Starts writing checkpoint `step` (returns once the arrays are copied off the devices)."""
        self.manager.save(step, args=ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardSave(state.variables), HEADER: ocp.args.JsonSave(spec.to_json()),
            TRAIN_STATE: ocp.args.StandardSave(state.run_state), HOST_STATE: ocp.args.JsonSave(host_state)}),
            metrics=None if accuracy is None else {METRIC: accuracy})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, target: TrainState) -> tuple[TrainState, dict] | None:
        """(state, host state) of the newest checkpoint that restores into `target` (abstract arrays
        with shardings), or None when there is none. Newer checkpoints that fail are reported and
        moved aside; if none restores, raises CheckpointRestoreError and moves nothing."""
        failures = []
        for step in reversed(self.manager.all_steps()):
            if (self.directory / str(step) / LEGACY_STATE).is_dir():
                raise CheckpointRestoreError(
                    f"{self.directory / str(step)} was written by an older manet-jax (one `{LEGACY_STATE}` item) and "
                    f"cannot be resumed; start a new workdir with --config.init_from={self.directory.parent}")
            try:
                metadata = self.manager.item_metadata(step)
                _check_matches(TrainState(**metadata[VARIABLES].tree, **metadata[TRAIN_STATE].tree), target)
                restored = self.manager.restore(step, args=ocp.args.Composite(**{
                    VARIABLES: ocp.args.StandardRestore(target.variables),
                    TRAIN_STATE: ocp.args.StandardRestore(target.run_state), HOST_STATE: ocp.args.JsonRestore()}))
            except Exception as e:  # Orbax raises many types for damaged or incompatible trees
                logger.warning("checkpoint %s cannot be restored (%s: %s); trying the previous one",
                               self.directory / str(step), type(e).__name__, str(e).splitlines()[0])
                failures.append((step, e))
                continue
            if failures:
                self._move_aside([s for s, _ in failures])
            state = TrainState(**restored[VARIABLES], **restored[TRAIN_STATE])
            return state, restored[HOST_STATE]
        if failures:
            lines = "\n".join(f"  {self.directory / str(s)}: {type(e).__name__}: {e}" for s, e in failures)
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} can be restored for this config (a different "
                f"dataset, class count or optimizer?); use a new workdir or fix the checkpoints:\n{lines}")
        return None

    def _move_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            corrupt = self.directory.parent / CORRUPT
            corrupt.mkdir(parents=True, exist_ok=True)
            for step in steps:
                self.directory.joinpath(str(step)).rename(corrupt / str(step))
                logger.warning("moved unrestorable checkpoint %d to %s", step, corrupt / str(step))
        multihost_utils.sync_global_devices("manet_jax.checkpoints_moved_aside")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until pending writes are done."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _check_matches(saved: Any, target: Any, shown: int = 5) -> None:
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
