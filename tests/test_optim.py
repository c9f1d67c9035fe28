"""The learning-rate schedules and the config keys that choose them."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from manet_jax.errors import ConfigError
from manet_jax.training.config import load_config
from manet_jax.training.steps import step_lr, warmup_cosine

REPO = Path(__file__).resolve().parents[1]


def test_step_lr_is_steplr_stepped_once_per_epoch():
    schedule = step_lr(0.1, steps_per_epoch=3, step_size=2, gamma=0.5)
    assert np.allclose([schedule(s) for s in range(13)], [0.1] * 6 + [0.05] * 6 + [0.025])


def test_warmup_cosine_rises_linearly_then_falls_as_half_a_cosine_to_zero():
    base, total, warmup = 0.08, 20, 4
    schedule = warmup_cosine(base, total, warmup)
    expected = [base * (s + 1) / warmup if s < warmup
                else base * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) for s in range(total + 1)]
    assert np.allclose([schedule(s) for s in range(total + 1)], expected, rtol=1e-6, atol=1e-8)
    assert float(schedule(warmup - 1)) == pytest.approx(base) and float(schedule(total)) == pytest.approx(0, abs=1e-8)
    assert np.all(np.diff([float(schedule(s)) for s in range(warmup, total + 1)]) < 0)


def test_warmup_cosine_without_warmup_starts_at_the_base_rate():
    schedule = warmup_cosine(0.1, 10, 0)
    assert float(schedule(0)) == pytest.approx(0.1) and float(schedule(5)) == pytest.approx(0.05)


def test_the_config_chooses_the_schedule():
    config = load_config(str(REPO / "configs/demo.py"))
    assert (config.lr_schedule, config.lr_step_epochs) == ("cosine", None)
    assert load_config(str(REPO / "configs/raf.py")).lr_schedule == "step"


@pytest.mark.parametrize("overrides, message", [
    (["lr_schedule=linear"], "config.lr_schedule must be one of step, cosine, got 'linear'"),
    (["lr_schedule=step"], "config.lr_step_epochs is not set; lr_schedule 'step' needs it"),
    (["warmup_epochs=-1"], "config.warmup_epochs must be a finite number of epochs >= 0, got -1.0"),
    (["lr_schedule=step", "lr_step_epochs=0"], "config.lr_step_epochs must be an integer >= 1, got 0"),
])
def test_schedule_keys_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(REPO / "configs/demo.py"), overrides)
