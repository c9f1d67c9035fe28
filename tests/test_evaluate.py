"""The evaluator (`python -m manet_jax.evaluate`) and the classification metrics."""

from __future__ import annotations

import json
import re
import sys

import data_fixtures as fx
import jax.numpy as jnp
import numpy as np
import pytest

from manet_jax.bundle import BundleError
from manet_jax.data.errors import DatasetNameError
from manet_jax.errors import ConfigError
from manet_jax.training.config import load_config
from manet_jax.training.evaluation import evaluate_checkpoint
from manet_jax.training.metrics import classification_metrics, confusion_matrix
from train_helpers import DATASET, REPO, TEST_LABEL_COUNTS, environment, make_checkpoint, make_dataset, run

CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
OVERRIDES = {"dataset": DATASET, "image_size": 64, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    make_dataset(root / "data")
    fx.make_class_folders(root / "manual8", {"train": "train", "test": "test"}, {str(k): k for k in range(8)}, ".png",
                          {"train": 1, "test": 2}, size=(40, 48))
    fx.build("image_folder/8", root / "data", root / "manual8")
    fx.make_class_folders(root / "manual_fed_ro", {"test": "."}, fx.FED_RO_FOLDERS, ".jpg", {"test": 1})
    fx.build("fed_ro", root / "data", root / "manual_fed_ro")
    return {"root": root, "data_dir": root / "data", "checkpoint": make_checkpoint(root / "checkpoint"),
            "env": environment(compilation_cache)}


def config_with(setup, **overrides):
    return load_config(str(REPO / "configs/demo.py"), [
        f"{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"], **overrides}.items()])


@pytest.mark.slow  # an evaluator process
def test_evaluator_reports_every_test_example_once(setup):
    overrides = [f"--config.{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"]}.items()]
    result = run([sys.executable, "-m", "manet_jax.evaluate", "--config", "configs/demo.py", *overrides,
                  "--checkpoint", str(setup["checkpoint"])], setup["env"])
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


@pytest.mark.slow  # an evaluator process
def test_cross_dataset_evaluation_in_one_command(setup, tmp_path):
    """A 7-class model on an 8-class dataset (Contempt left out), FED-RO and its own test split."""
    overrides = [f"--config.{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"]}.items()]
    result = run([sys.executable, "-m", "manet_jax.evaluate", "--config", "configs/demo.py", *overrides,
                  f"--config.eval_dataset=image_folder/8,fed_ro,{DATASET}", "--checkpoint", str(setup["checkpoint"]),
                  "--output-dir", str(tmp_path / "reports")], setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"image_folder_8_test": (14, [2] * 7, {"Contempt": 2}), "fed_ro_test": (7, [1] * 7, None),
                "synthetic_faces_64_32_20_test": (20, TEST_LABEL_COUNTS, None)}
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(expected)
    for folder, (count, per_class, left_out) in expected.items():
        metrics = json.loads((tmp_path / "reports" / folder / "metrics.json").read_text())
        assert metrics["count"] == count and metrics.get("left_out") == left_out
        assert np.array(metrics["fused"]["confusion_matrix"]).sum(1).tolist() == per_class
        assert list(metrics["fused"]["recall"]) == list(CLASSES)
        assert re.search(rf"{metrics['dataset']}/test accuracy .*, n={count}", result.stderr)


def test_eval_sets_that_cannot_be_evaluated_are_named(setup):
    with pytest.raises(ConfigError, match=r"config.eval_dataset: 'fed_ro\+sfew' is not NAME or NAME:SPLIT"):
        config_with(setup, eval_dataset="fed_ro+sfew")
    with pytest.raises(DatasetNameError, match=r"fed_ro has no split 'validation' to evaluate; splits: \['test'\]"):
        evaluate_checkpoint(config_with(setup, eval_dataset="fed_ro:validation"), str(setup["checkpoint"]))
    with pytest.raises(ConfigError, match=r"fed_ro/test is evaluated twice"):
        evaluate_checkpoint(config_with(setup, eval_dataset="fed_ro,fed_ro:test"), str(setup["checkpoint"]))
    with pytest.raises(ConfigError, match=r"config.dataset: fed_ro has no train split; it is for evaluation only"):
        evaluate_checkpoint(config_with(setup, dataset="fed_ro"), str(setup["checkpoint"]))


@pytest.mark.slow  # two full-size random checkpoints written: about 6 s
def test_checkpoint_of_another_class_count_or_wiring_is_refused(setup, tmp_path):
    config = config_with(setup)
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
