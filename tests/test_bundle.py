"""The model bundle: one format written by the converter and the trainer, one loader for it and
for the layouts written before it (tests/data/legacy), and the one choice of the best checkpoint."""

from __future__ import annotations

import itertools
import shutil

import jax
import numpy as np
import pytest

from manet_jax.bundle import (Bundle, BundleError, ModelSpec, best_step, default_class_names, load_bundle,
                              save_bundle)
from manet_jax.errors import ConfigError
from manet_jax.mesh import make_mesh
from manet_jax.models import MANet, variable_shapes
from manet_jax.training.checkpoints import CheckpointRestoreError, Checkpoints
from manet_jax.training.steps import abstract_train_state, sgd
from train_helpers import REPO

LEGACY = REPO / "tests/data/legacy"
CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")


def numbered(tree, first: int, value=lambda i: i):
    """`tree` with leaf i (in flattening order, counted from `first`) filled with value(i)."""
    counter = itertools.count(first)
    return jax.tree.map(lambda leaf: np.full(leaf.shape, value(next(counter)), leaf.dtype), tree)


def assert_trees_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        assert a.dtype == b.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_round_trip_keeps_variables_and_spec(tmp_path):
    variables = numbered(variable_shapes(8), 1)
    spec = ModelSpec(default_class_names(8), image_size=96, beta=0.5, dtype="bfloat16", multiscale_wiring="2021",
                     source="a test")
    save_bundle(tmp_path / "model", variables, spec)
    bundle = load_bundle(tmp_path / "model")
    assert bundle.spec == spec and bundle.step is None and bundle.spec.class_names[-1] == "Contempt"
    assert_trees_equal(bundle.variables, variables)
    assert bundle.spec.module() == MANet(8, dtype=np.dtype("bfloat16"), multiscale_wiring="2021")
    with pytest.raises(BundleError, match="already holds a model"):
        save_bundle(tmp_path / "model", variables, spec)


def test_legacy_converted_checkpoint_loads():
    """Written by the converter before bundles (commit 30481f4): leaf i of the variables is i/1000."""
    bundle = load_bundle(LEGACY / "converted")
    assert bundle.spec == ModelSpec(CLASSES, 224, 0.6, "float32", "2023", "legacy test fixture")
    assert_trees_equal(bundle.variables, numbered(variable_shapes(7), 1, lambda i: i / 1000))


def test_legacy_workdir_loads_its_best_checkpoint():
    """Written by the trainer's checkpointing before bundles: step 4 (accuracy 0.5) and step 8 (0.25),
    whose train state had leaf i = i % 97 (step first, then params, batch_stats, ...), plus 1 at step 8."""
    bundle = load_bundle(LEGACY / "workdir")
    assert bundle.step == 4
    assert (bundle.spec.class_names, bundle.spec.image_size, bundle.spec.beta) == (CLASSES, 64, 0.5)
    shapes = variable_shapes(7)
    num_params = len(jax.tree.leaves(shapes["params"]))
    expected = {"params": numbered(shapes["params"], 2, lambda i: i % 97),
                "batch_stats": numbered(shapes["batch_stats"], 2 + num_params, lambda i: i % 97)}
    assert_trees_equal(bundle.variables, expected)


def test_legacy_workdir_cannot_be_resumed_and_says_what_to_do(tmp_path):
    shutil.copytree(LEGACY / "workdir", tmp_path / "workdir")
    checkpoints = Checkpoints(tmp_path / "workdir/checkpoints")
    with pytest.raises(CheckpointRestoreError, match=r"older manet-jax .* --config.init_from=.*workdir"):
        checkpoints.restore_latest(abstract_train_state(MANet(7), sgd(0.01), make_mesh()))
    checkpoints.close()


def test_errors_name_the_path(tmp_path):
    with pytest.raises(BundleError, match=f"{tmp_path / 'missing'}: does not exist"):
        load_bundle(tmp_path / "missing")
    with pytest.raises(BundleError, match="not a manet-jax model"):
        load_bundle(tmp_path)
    (tmp_path / "header").mkdir()
    (tmp_path / "header/manet.json").write_text('{"format": "something else"}')
    with pytest.raises(BundleError, match="not a manet-jax model bundle header"):
        load_bundle(tmp_path)


def test_spec_checks_its_values():
    with pytest.raises(ConfigError, match="image_size=100: MA-Net needs an input size that is a positive multiple of 16"):
        ModelSpec(CLASSES, image_size=100)
    with pytest.raises(ConfigError, match="multiscale_wiring must be one of"):
        ModelSpec(CLASSES, multiscale_wiring="2022")
    bundle = Bundle(ModelSpec(CLASSES), {})
    assert bundle.resized(None, "--image-size") is bundle and bundle.resized(96, "--image-size").spec.image_size == 96
    with pytest.raises(ConfigError, match="--image-size=40"):
        bundle.resized(40, "--image-size")


def test_best_step_keeps_the_earlier_of_equal_accuracies():
    assert best_step([(8, 0.5), (4, 0.5), (12, 0.25)]) == 4
    assert best_step([(4, 0.5), (8, 0.75), (12, None)]) == 8
    assert best_step([(4, None), (8, float("nan"))]) is None
