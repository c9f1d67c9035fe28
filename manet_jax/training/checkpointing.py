"""Trainer checkpoints: an Orbax CheckpointManager in `<workdir>/checkpoints/<step>/`.

Each checkpoint holds the whole train state (`state/`) and the host side of the run
(`host_state/`, JSON: e.g. the best and last evaluation so far). Writes are asynchronous; the
latest `keep` checkpoints are kept, plus the one with the best eval accuracy. A checkpoint that
cannot be restored is moved to `<workdir>/checkpoints_corrupt/` when an older one restores, so the
run goes on from there; one whose arrays differ from the config's is reported array by array.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import SingleDeviceSharding
from orbax.checkpoint import checkpoint_managers

STATE, HOST_STATE = "state", "host_state"
METRIC = "accuracy"  # eval accuracy of the fused prediction: what picks the best checkpoint
CHECKPOINTS, CORRUPT = "checkpoints", "checkpoints_corrupt"

logger = logging.getLogger(__name__)


class CheckpointRestoreError(RuntimeError):
    """No checkpoint in a directory can be restored; the message lists each one's error."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays differ in shape or dtype from the state they would restore into."""


def absolute_path(path: epath.PathLike) -> epath.Path:
    """`path` made absolute, as Orbax requires; a URL such as `gs://bucket/run` stays as it is
    (`Path.absolute()` would put the working directory in front of it)."""
    path = epath.Path(path)
    return path if "://" in str(path) else path.absolute()


def _metric(metrics: dict[str, float]) -> float:
    return metrics[METRIC]


class Checkpoints:
    """Save and restore train states, with the run's host state, in `directory`."""

    def __init__(self, directory: epath.PathLike, keep: int = 2, read_only: bool = False):
        self.directory = absolute_path(directory)
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(keep),
            checkpoint_managers.BestN(get_metric_fn=_metric, n=1, keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(
            best_fn=_metric, best_mode="max", preservation_policy=policy, read_only=read_only,
            create=not read_only, cleanup_tmp_directories=not read_only, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={STATE: ocp.StandardCheckpointHandler(), HOST_STATE: ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, host_state: dict, accuracy: float | None = None) -> None:
        """Starts writing checkpoint `step` (returns once the arrays are copied off the devices)."""
        self.manager.save(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                           HOST_STATE: ocp.args.JsonSave(host_state)}),
                          metrics=None if accuracy is None else {METRIC: accuracy})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
        """(state, host state) of the newest checkpoint that restores into `target` (abstract arrays
        with shardings), or None when there is none. Newer checkpoints that fail are reported and
        moved aside; if none restores, raises CheckpointRestoreError and moves nothing."""
        failures = []
        for step in reversed(self.manager.all_steps()):
            try:
                _check_matches(self.manager.item_metadata(step)[STATE].tree, target)
                restored = self.manager.restore(step, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(target), HOST_STATE: ocp.args.JsonRestore()}))
            except Exception as e:  # Orbax raises many types for damaged or incompatible trees
                logger.warning("checkpoint %s cannot be restored (%s: %s); trying the previous one",
                               self.directory / str(step), type(e).__name__, str(e).splitlines()[0])
                failures.append((step, e))
                continue
            if failures:
                self._move_aside([s for s, _ in failures])
            return restored[STATE], restored[HOST_STATE]
        if failures:
            lines = "\n".join(f"  {self.directory / str(s)}: {type(e).__name__}: {e}" for s, e in failures)
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} can be restored for this config (a different "
                f"dataset, class count or optimizer?); use a new workdir or fix the checkpoints:\n{lines}")
        return None

    def restore_variables(self, step: int | None = None) -> tuple[dict[str, Any], int]:
        """({'params', 'batch_stats'} as NumPy arrays, step) of checkpoint `step` (default: the
        best by eval accuracy, else the latest), restored on this host whatever the saving mesh."""
        step = step if step is not None else self.manager.best_step() or self.manager.latest_step()
        if step is None:
            raise CheckpointRestoreError(f"{self.directory}: holds no checkpoint")
        device = SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
        metadata = self.manager.item_metadata(step)[STATE].tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        state = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)}))
        state = state[STATE]
        return jax.tree.map(np.asarray, {"params": state["params"], "batch_stats": state["batch_stats"]}), step

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
