"""The trainer's optimizer, StepLR schedule, weight decay and BatchNorm momentum over a run match
the official recipe step by step in float64 (tests/recipe_parity.py, own process for JAX x64)."""

import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import REPO, environment

pytestmark = pytest.mark.slow  # trains in a process of its own (float64)


def test_two_epochs_with_a_learning_rate_step_match_the_official_recipe(tmp_path: Path) -> None:
    script = Path(__file__).with_name("recipe_parity.py")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], env=environment(tmp_path / "cache"),
                            cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" (lr ")[1].split(")")[0] for line in steps] == ["0.01"] * 3 + ["0.001"] * 3, steps
