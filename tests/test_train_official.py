"""The trainer beside an official curve, end to end: a tiny run whose config follows a curve's
recipe (the shipped curves replaced, in the trainer's process, by one of the tiny run's recipe)
logs each epoch beside the curve and keeps the comparison in summary.json."""

from __future__ import annotations

import json
import sys

import pytest
from train_helpers import DATASET, EPOCHS, run, train_command, trainer_setup

# The trainer, with official.curves() giving one curve of the tiny run's recipe (init_from: argv[1]).
TRAINER = """
import sys
from manet_jax.training import official
curve = official.Curve(
    "TINY", "a test curve", "tests", {"dataset": sys.argv[1], "eval_dataset": None, "eval_split": None,
    "batch_size": 8, "input.balanced_sampling": False, "init_from": sys.argv[2]},
    learning_rate=(0.01, 0.01, 0.001), train_loss=(2.0, 2.0, 2.0), train_accuracy=(0.2, 0.2, 0.2),
    test_accuracy=(1.0, 1.0, 1.0))
official.curves = lambda: {"TINY": curve}
from manet_jax.train import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow  # a trainer process, with the 64x64 steps of test_train's compilation cache
def test_a_run_of_an_official_recipe_logs_each_epoch_beside_it(tmp_path, compilation_cache):
    setup = trainer_setup(tmp_path, compilation_cache)
    workdir = tmp_path / "run"
    command = train_command(workdir, setup["data_dir"], setup["init_from"])
    trained = run([sys.executable, "-c", TRAINER, DATASET, str(setup["init_from"]), *command[3:]], setup["env"])
    assert trained.returncode == 0, trained.stderr
    official = json.loads((workdir / "summary.json").read_text())["official"]
    assert official["curve"] == "TINY" and [e["epoch"] for e in official["epochs"]] == list(range(1, EPOCHS + 1))
    output = trained.stdout + trained.stderr
    for entry in official["epochs"]:
        assert entry["gap"] == pytest.approx(entry["accuracy"] - 1.0) and entry["verdict"] == "behind"
        assert (f"; official TINY 100.00% (gap {100 * entry['gap']:+.2f} points, behind)\n" in output), output
