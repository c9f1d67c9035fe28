"""Fabricated trainer workdirs of a paper config, for the official-curve tests and the figure in
docs/training.md: config.json, metrics.jsonl and summary.json as the trainer writes them, with
test accuracies chosen per epoch.

  python tests/official_runs.py docs/official_curves_example.png
draws that figure: three 8-epoch RAF-DB runs, one on the official curve, one behind it from
epoch 4, one with twice the official learning rate.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from manet_jax.training.config import load_config, save_config
from manet_jax.training.official import curves, epoch_learning_rates, matching_curve
from manet_jax.training.record import RunSummary

REPO = Path(__file__).resolve().parents[1]


def results(accuracy: float) -> dict:
    """An eval set's results with the fused head's accuracy `accuracy` (one class's recall)."""
    head = {"accuracy": accuracy, "mean_class_accuracy": accuracy, "recall": {"Happiness": accuracy}}
    return {"dataset": "raf_db", "split": "test", "loss": 1.0, "count": 3068, "fused": head}


def fabricate(workdir: Path, accuracies: Sequence[float], losses: Sequence[float] | None = None,
              config: str = "configs/raf.py", overrides: Sequence[str] = (), steps_per_epoch: int = 96) -> Path:
    """A workdir of `config` (with --config overrides) whose epoch e was evaluated at
    accuracies[e - 1] (a fraction), its train loss losses[e - 1] (default: the official run's)."""
    config = load_config(str(REPO / config), overrides)
    workdir.mkdir(parents=True)
    save_config(config, workdir / "config.json")
    name = f"{config.dataset}/test"
    summary = RunSummary(name, workdir / "summary.json", curve=matching_curve(config))
    rates = epoch_learning_rates(config)
    losses = losses or curves()["RAF-DB"].train_loss
    with (workdir / "metrics.jsonl").open("w") as f:
        for epoch, accuracy in enumerate(accuracies, start=1):
            step = epoch * steps_per_epoch
            train = {"loss": losses[epoch - 1], "accuracy": accuracy - 0.05}
            summary.add_evaluation(epoch, step, {name: results(accuracy)})
            f.write(json.dumps({"step": step, "epoch": float(epoch), "train": train,
                                "learning_rate": rates[epoch - 1], "images_per_second": 100.0}) + "\n")
            f.write(json.dumps({"step": step, "epoch": epoch, "train_epoch": train, "eval": {name: results(accuracy)},
                                "best": {"epoch": summary.best["epoch"], "accuracy": accuracy}}) + "\n")
    summary.write()
    return workdir


def example_runs(root: Path) -> list[Path]:
    """The docs' three 8-epoch RAF-DB runs in `root`."""
    curve = curves()["RAF-DB"]
    official, loss = curve.test_accuracy[:8], curve.train_loss[:8]
    late = [0.0] * 3 + [1.0] * 5  # behind from epoch 4
    return [fabricate(root / "raf_on_track", [a + 0.004 for a in official], [v - 0.01 for v in loss]),
            fabricate(root / "raf_behind", [a - 0.07 * d for a, d in zip(official, late)],
                      [v + 0.08 * d for v, d in zip(loss, late)]),
            fabricate(root / "raf_lr_0.02", [a - 0.01 for a in official], [v + 0.03 for v in loss],
                      overrides=["learning_rate=0.02"])]


if __name__ == "__main__":
    from manet_jax.report import main

    figure = Path(sys.argv[1]).absolute()
    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)  # the runs named runs/... in the figure
        runs = example_runs(Path("runs"))
        sys.exit(main([str(run) for run in runs] + ["--official", str(figure)]))
