"""The official MA-Net training curves, and which of them a run's config follows.

`official_curves.json` holds, for each of the six logs in the official repository's `log/`
(RAF-DB, AffectNet-7, AffectNet-8, CAER-S, SFEW, FED-RO), every epoch's learning rate, the
epoch's last running train loss and accuracy, and the test accuracy, as the log prints them,
with the commit they were read from and the config that reproduces each
(`scripts/official_curves.py` derives the file from a clone). A run follows a curve's recipe
when its dataset, first eval set, batch size, sampling, initialisation (the same file name),
number of epochs and learning rate of every epoch are the official run's (`matching_curve`);
only then does the trainer compare its epochs with the curve. Light to import: no JAX.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


CURVES_FILE = Path(__file__).with_name("official_curves.json")
# The config keys of a recipe that official_curves.json keeps; of eval_dataset and eval_split only
# the first eval set is compared (`first_eval_set`): further eval sets change no epoch.
RECIPE_KEYS = ("dataset", "eval_dataset", "eval_split", "batch_size", "input.balanced_sampling", "init_from")
LR_TOLERANCE = 1e-5  # relative: a float32 learning rate against the log's Python float
SWING_EPOCHS = 2  # the swing at epoch e: the largest change between consecutive epochs within e +- 2


@dataclass(frozen=True)
class Curve:
    """One official run: per epoch (epoch 1 first) its learning rate, train loss, train and test
    accuracy (fractions); the recipe of the config that reproduces it."""

    name: str  # the log's name, e.g. 'RAF-DB'
    source: str  # where the numbers come from, e.g. 'github.com/zengqunzhao/MA-Net@923fa6c log/RAF-DB.txt'
    config: str  # the config that reproduces it, e.g. 'configs/raf.py'
    recipe: dict[str, Any]  # RECIPE_KEYS' values in that config
    learning_rate: tuple[float, ...]
    train_loss: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    test_accuracy: tuple[float, ...]

    @property
    def epochs(self) -> int:
        return len(self.test_accuracy)

    def best(self) -> tuple[int, float]:
        """(epoch, test accuracy) of the best epoch, the earliest on ties."""
        accuracy = max(self.test_accuracy)
        return self.test_accuracy.index(accuracy) + 1, accuracy

    def swing(self, epoch: int) -> float:
        """The official run's own epoch-to-epoch swing at `epoch`: the largest change of its test
        accuracy between consecutive epochs within SWING_EPOCHS of it."""
        a = self.test_accuracy
        around = range(max(epoch - 1 - SWING_EPOCHS, 1), min(epoch + SWING_EPOCHS, self.epochs))  # 0-based
        return max(abs(a[k] - a[k - 1]) for k in around)

    def compare(self, epoch: int, accuracy: float) -> dict[str, Any] | None:
        """`{'epoch', 'accuracy', 'official', 'gap', 'swing', 'verdict'}` of a run's test accuracy at
        `epoch` (fractions; gap = accuracy - official); None past the official run's last epoch.
        The verdict is 'behind' or 'ahead' when the gap exceeds the swing, else 'on track'."""
        if not 1 <= epoch <= self.epochs:
            return None
        official, swing = self.test_accuracy[epoch - 1], self.swing(epoch)
        gap = accuracy - official
        verdict = "behind" if gap < -swing else "ahead" if gap > swing else "on track"
        return {"epoch": epoch, "accuracy": accuracy, "official": official, "gap": gap, "swing": swing,
                "verdict": verdict}


@functools.cache
def curves() -> dict[str, Curve]:
    """The six official curves by log name, in the order of `official_curves.json`."""
    data = json.loads(CURVES_FILE.read_text())
    source = f"{data['source']['repository']}@{data['source']['commit'][:7]}"
    return {name: Curve(name, f"{source} {c['log']}", c["config"], c["recipe"], tuple(c["learning_rate"]),
                        tuple(c["train_loss"]), tuple(p / 100 for p in c["train_accuracy"]),
                        tuple(p / 100 for p in c["test_accuracy"]))
            for name, c in data["curves"].items()}


def config_value(config: Any, key: str) -> Any:
    """A dotted key of a config (a ConfigDict or config.json's dict); None where it has none."""
    for part in key.split("."):
        config = config.get(part) if hasattr(config, "get") else None
    return config


def epoch_learning_rates(config: Any) -> list[float] | None:
    """The learning rate of each epoch of a run of `config` (StepLR per epoch); None for another schedule."""
    if config_value(config, "lr_schedule") != "step":
        return None
    lr, gamma, step = (config_value(config, key) for key in ("learning_rate", "lr_gamma", "lr_step_epochs"))
    return [lr * gamma ** (epoch // step) for epoch in range(config_value(config, "num_epochs"))]


def same_learning_rates(run: Sequence[float], official: Sequence[float]) -> bool:
    return len(run) == len(official) and all(math.isclose(a, b, rel_tol=LR_TOLERANCE) for a, b in zip(run, official))


def recipe_differences(config: Any, curve: Curve) -> list[str]:
    """'key: run value, official value' for each part of `curve`'s recipe that `config` does not
    follow (the learning rate of each epoch as 'learning rate'); [] when it follows it all."""
    differences = []
    if first_eval_set(config) != first_eval_set(curve.recipe):
        differences.append(f"first eval set: {eval_set_text(config)}, official {eval_set_text(curve.recipe)}")
    for key in ("dataset", "batch_size", "input.balanced_sampling", "init_from"):
        run, official = config_value(config, key), curve.recipe[key]
        same = _file_name(run) == _file_name(official) if key == "init_from" else run == official
        if not same:
            differences.append(f"{key}: {run!r}, official {official!r}")
    if config_value(config, "num_epochs") != curve.epochs:
        differences.append(f"num_epochs: {config_value(config, 'num_epochs')}, official {curve.epochs}")
    else:
        rates = epoch_learning_rates(config)
        if rates is None or not same_learning_rates(rates, curve.learning_rate):
            differences.append(f"learning rate: {_schedule(config)}, official {describe_rates(curve.learning_rate)}")
    return differences


def matching_curve(config: Any) -> Curve | None:
    """The curve whose recipe `config` follows in every part, if any."""
    return next((c for c in curves().values() if not recipe_differences(config, c)), None)


def curve_of_dataset(config: Any) -> Curve | None:
    """The curve of `config`'s dataset and first eval set (recipe or not), if any: the one to compare with."""
    return next((c for c in curves().values() if config_value(config, "dataset") == c.recipe["dataset"]
                 and first_eval_set(config) == first_eval_set(c.recipe)), None)


def first_eval_set(config: Any) -> tuple[str, str | None]:
    """(dataset, split) of the eval set that ranks a run of `config` (config.eval_sets' first), a
    split left out None: the dataset's own. Further eval sets leave the training as it is."""
    entries = config_value(config, "eval_dataset")
    first = entries.split(",")[0].strip() if entries else config_value(config, "dataset").split("+")[0]
    name, _, split = first.partition(":")
    return name, split or config_value(config, "eval_split")


def eval_set_text(config: Any) -> str:
    """'raf_db (its test split)' or 'raf_db:train': the first eval set of `config`."""
    name, split = first_eval_set(config)
    return f"{name}:{split}" if split else f"{name} (its test split)"


def describe_rates(rates: Sequence[float]) -> str:
    """'0.01 for 15 epochs, 0.001 for 15, ...' of per-epoch learning rates."""
    runs: list[list] = []
    for rate in rates:
        if runs and math.isclose(runs[-1][0], rate, rel_tol=LR_TOLERANCE):
            runs[-1][1] += 1
        else:
            runs.append([rate, 1])
    parts = [f"{rate:.3g} for {count}" for rate, count in runs]
    return f"{parts[0]} epochs" + "".join(f", {p}" for p in parts[1:])


def _schedule(config: Any) -> str:
    rates = epoch_learning_rates(config)
    return describe_rates(rates) if rates else f"lr_schedule {config_value(config, 'lr_schedule')!r}"


def _file_name(path: str | None) -> str | None:
    return os.path.basename(os.path.normpath(path)) if path else path


_EPOCH = re.compile(r"Epoch: \[(\d+)\]\[\s*\d+/\d+\]\s+Loss [\d.]+ \(([\d.]+)\)\s+Accuracy [\d.]+ \(([\d.]+)\)")
_LR = re.compile(r"Current learning rate: (\S+)")
_TEST = re.compile(r" \* Accuracy ([\d.]+)")


def parse_log(text: str, where: str) -> dict[str, list[float]]:
    """The per-epoch columns of an official training log (`main.py`'s output): 'learning_rate'
    (each 'Current learning rate' line), 'train_loss' and 'train_accuracy' (the running averages
    of the epoch's last 'Epoch: [e][i/n]' line, accuracy in %) and 'test_accuracy' (each
    ' * Accuracy' line, %). Raises ValueError naming `where` and the line of a log out of order."""
    columns: dict[str, list[float]] = {"learning_rate": [], "train_loss": [], "train_accuracy": [],
                                       "test_accuracy": []}
    last: tuple[float, float] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        epoch = len(columns["test_accuracy"])
        if match := _LR.fullmatch(line):
            if len(columns["learning_rate"]) != epoch:
                raise ValueError(f"{where}:{number}: a second learning rate in epoch {epoch}")
            columns["learning_rate"].append(float(match.group(1)))
        elif match := _EPOCH.match(line):
            if int(match.group(1)) != epoch or len(columns["learning_rate"]) != epoch + 1:
                raise ValueError(f"{where}:{number}: epoch {match.group(1)} where epoch {epoch} was expected, "
                                 "after its learning rate")
            last = float(match.group(2)), float(match.group(3))
        elif match := _TEST.fullmatch(line):
            if last is None:
                raise ValueError(f"{where}:{number}: a test accuracy before any training step of epoch {epoch}")
            columns["train_loss"].append(last[0])
            columns["train_accuracy"].append(last[1])
            columns["test_accuracy"].append(float(match.group(1)))
            last = None
    if not columns["test_accuracy"] or len(columns["learning_rate"]) != len(columns["test_accuracy"]):
        raise ValueError(f"{where}: no complete epoch, or an epoch without its test accuracy at the end")
    return columns
