"""A training run's bookkeeping across epochs: its best and last evaluation, the train metrics of
the epoch so far, and `summary.json`.

The summary's format is `workdir`'s; the best entry is the one `bundle.best_step` picks by the
fused accuracy on the first eval set (`ranked_by`), as the checkpoints keep theirs. Checkpoints
keep the bookkeeping as their host state, so that a resumed run goes on as an uninterrupted one.
A run that follows an official recipe (`official.matching_curve`) also keeps, under `official`,
each evaluated epoch's accuracy beside the official run's (`official.Curve.compare`).
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from manet_jax.bundle import best_step
from manet_jax.errors import ConfigError
from manet_jax.storage import replace_text
from manet_jax.training.lease import Lease, check_held
from manet_jax.training.official import Curve
from manet_jax.training.workdir import upgraded


class RunSummary:
    """The best and last evaluation of every eval set, ranked by `ranked_by`'s fused accuracy, and
    the epoch's train metrics, and each epoch beside the official `curve` (if the run follows its
    recipe); `write` replaces `path` (when `enabled`, process 0) while this trainer holds `lease`
    (if given)."""

    def __init__(self, ranked_by: str, path: epath.Path, enabled: bool = True, lease: Lease | None = None,
                 curve: Curve | None = None):
        self.ranked_by, self.path, self.enabled, self.lease, self.curve = ranked_by, path, enabled, lease, curve
        self.official: list[dict[str, Any]] = []  # Curve.compare of each evaluated epoch
        self.best: dict[str, Any] | None = None  # {"epoch", "step", "eval": {eval set: results}}
        self.last: dict[str, Any] | None = None
        self.epoch_metrics: list[dict[str, float]] = []  # host metrics of this epoch's steps so far

    def to_json(self) -> dict[str, Any]:
        """`{'ranked_by', 'best', 'last'}` (and `official`: the curve, its source and the compared
        epochs, with a curve), as summary.json holds it."""
        summary = {"ranked_by": self.ranked_by, "best": self.best, "last": self.last}
        if self.curve is not None:
            summary["official"] = {"curve": self.curve.name, "source": self.curve.source, "epochs": self.official}
        return summary

    def host_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the train state, so that a resumed run logs as this one."""
        return {"summary": self.to_json(), "epoch_metrics": list(self.epoch_metrics)}

    def resume(self, host_state: dict[str, Any], dataset: str, workdir: epath.Path) -> None:
        """Takes up a checkpoint's host state (its summary upgraded as `workdir.upgraded` reads a run of
        `dataset`); raises ConfigError if the checkpoints of `workdir` are ranked by another eval set."""
        summary = upgraded(host_state["summary"], dataset)
        if summary["ranked_by"] not in (None, self.ranked_by):
            raise ConfigError(f"{workdir} ranks its checkpoints by {summary['ranked_by']}, this config by "
                              f"{self.ranked_by} (its first eval set); resume with the eval sets it was "
                              "started with (config.eval_dataset), or use a new workdir")
        self.best, self.last = summary["best"], summary["last"]
        self.official = summary.get("official", {}).get("epochs", []) if self.curve is not None else []
        self.epoch_metrics = host_state["epoch_metrics"]

    def add_train(self, window: list[dict[str, float]]) -> None:
        """Adds the host metrics of some of this epoch's steps."""
        self.epoch_metrics += window

    def take_epoch_metrics(self) -> list[dict[str, float]]:
        """The epoch's train metrics, leaving none for the next."""
        metrics, self.epoch_metrics = self.epoch_metrics, []
        return metrics

    def add_evaluation(self, epoch: int, step: int, results: dict[str, Any]) -> float:
        """Records the results of every eval set at `step` as the last entry, and the best if it is;
        returns the accuracy that ranks the checkpoints."""
        entry = {"epoch": epoch, "step": step, "eval": results}
        candidates = [(step, self.accuracy(entry))]
        if self.best is not None:
            candidates.append((self.best["step"], self.accuracy(self.best)))
        if best_step(candidates) == step:
            self.best = entry
        self.last = entry
        compared = self.curve and self.curve.compare(epoch, self.accuracy(entry))
        if compared:
            self.official.append(compared)
        return self.accuracy(entry)

    def official_at(self, epoch: int) -> dict[str, Any] | None:
        """The comparison of `epoch` with the official curve, if it was compared."""
        return next((c for c in self.official if c["epoch"] == epoch), None)

    def accuracy(self, entry: dict[str, Any]) -> float:
        """An entry's fused accuracy on the `ranked_by` set."""
        return entry["eval"][self.ranked_by]["fused"]["accuracy"]

    def write(self) -> None:
        """Replaces summary.json whole (process 0)."""
        if self.enabled:
            check_held(self.lease)
            replace_text(self.path, json.dumps(self.to_json(), indent=2) + "\n")
