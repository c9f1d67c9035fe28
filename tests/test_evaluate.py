"""The evaluator (`python -m manet_jax.evaluate`) and the classification metrics."""

from __future__ import annotations

import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from manet_jax.bundle import BundleError
from manet_jax.training.config import load_config
from manet_jax.training.evaluation import evaluate_checkpoint
from manet_jax.training.metrics import classification_metrics, confusion_matrix
from train_helpers import DATASET, REPO, TEST_LABEL_COUNTS, environment, make_checkpoint, make_dataset, run

CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
OVERRIDES = {"dataset": DATASET, "image_size": 64, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    make_dataset(root / "data")
    return {"root": root, "data_dir": root / "data", "checkpoint": make_checkpoint(root / "checkpoint")}


def test_evaluator_reports_every_test_example_once(setup):
    overrides = [f"--config.{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"]}.items()]
    result = run([sys.executable, "-m", "manet_jax.evaluate", "--config", "configs/demo.py", *overrides,
                  "--checkpoint", str(setup["checkpoint"])], environment(setup["root"] / "compilation_cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = setup["checkpoint"] / "eval" / "synthetic_faces_64_32_20_test"
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["split"], metrics["count"]) == (DATASET, "test", 20)
    for head in ("fused", "local", "global"):
        confusion = np.array(metrics[head]["confusion_matrix"])
        assert confusion.sum(1).tolist() == TEST_LABEL_COUNTS and metrics[head]["count"] == 20
        assert metrics[head]["accuracy"] == pytest.approx(np.trace(confusion) / 20)
        assert list(metrics[head]["recall"]) == list(CLASSES)
    assert np.isfinite(metrics["loss"])
    assert (report / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_checkpoint_of_another_class_count_or_wiring_is_refused(setup, tmp_path):
    config = load_config(str(REPO / "configs/demo.py"),
                         [f"{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"]}.items()])
    checkpoint = make_checkpoint(tmp_path / "eight", num_classes=8)
    with pytest.raises(BundleError, match="8-way heads but synthetic_faces/64_32_20 has 7 classes"):
        evaluate_checkpoint(config, str(checkpoint))
    checkpoint = make_checkpoint(tmp_path / "wired", multiscale_wiring="2021")
    with pytest.raises(BundleError, match="2021 multi-scale wiring; evaluate it with --config.multiscale_wiring=2021"):
        evaluate_checkpoint(config, str(checkpoint))


def test_classification_metrics():
    labels = jnp.array([0, 0, 1, 1, 1, 2])
    predictions = jnp.array([0, 1, 1, 1, 0, 2])
    mask = jnp.array([1, 1, 1, 1, 1, 0])  # the last row is padding
    confusion = np.asarray(confusion_matrix(labels, predictions, 4, mask))
    assert confusion.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    metrics = classification_metrics(confusion, ["a", "b", "c", "d"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["recall"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": None, "d": None}
    assert metrics["mean_class_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)  # absent classes left out
    assert metrics["count"] == 5
