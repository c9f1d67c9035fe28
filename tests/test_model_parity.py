"""Numerics parity of MANet with the official PyTorch model (golden files in tests/data/).

Tolerances are the golden README's recommendations for a float32 port (tests/data/README.md),
the same for both multi-scale wirings: the 2023 one on the 7- and 8-class sets, the 2021 one
(the official code at aaf8788) on the 7-class set. Gradients and parameters are compared in the
reference layout through `flax_to_torch`.
"""

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import golden
from manet_jax.convert import flax_to_torch, torch_to_flax
from manet_jax.models import MANet, fused_logits, manet_loss, stage_outputs
from manet_jax.training.steps import sgd

LR = 0.01
SETS = {7: (0, 4), 8: (1, 2)}  # num_classes -> (seed, batch)
CASES = [(7, "2023"), (8, "2023"), (7, "2021")]  # (num_classes, multi-scale wiring) of the golden sets
STAGES = ["layer2"] + [f"layer{j}_1_p{k}" for k in range(1, 5) for j in (3, 4)] + ["layer3_2", "layer4_2"]


def train_forward(model, variables, x, y):
    """value_and_grad of the reference loss; aux: train logits, loss parts, updated BN statistics."""

    def loss_fn(params):
        (local, glob), updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                             train=True, mutable=["batch_stats"])
        loss, parts = manet_loss(local, glob, y)
        return loss, (local, glob, parts, updates["batch_stats"])

    return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])


def as_reference(params, batch_stats):
    return flax_to_torch({"params": params, "batch_stats": batch_stats})


@functools.cache
def compute(num_classes: int, wiring: str) -> dict:
    """Every quantity the tests compare, for one golden set (one compile per function)."""
    seed, batch = SETS[num_classes]
    variables = torch_to_flax(golden.state_dict(seed, num_classes))
    x, y = golden.inputs(seed, batch, num_classes)
    x = jnp.asarray(x.transpose(0, 2, 3, 1))
    model = MANet(num_classes, multiscale_wiring=wiring)
    with jax.default_matmul_precision("highest"):
        (local, glob), state = jax.jit(
            lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(variables, x)
        (loss, (t_local, t_glob, parts, batch_stats)), grads = jax.jit(
            functools.partial(train_forward, model))(variables, x, y)
    opt = sgd(LR)
    updates, _ = opt.update(grads, opt.init(variables["params"]), variables["params"])
    new_params = optax.apply_updates(variables["params"], updates)
    zeros = jax.tree_util.tree_map(np.zeros_like, variables["batch_stats"])
    return {
        "eval": (local, glob), "stages": stage_outputs(state["intermediates"]),
        "train": (t_local, t_glob), "loss": loss, "parts": parts,
        "buffers": as_reference(variables["params"], batch_stats),
        "grads": as_reference(grads, zeros), "params": as_reference(variables["params"], zeros),
        "new_params": as_reference(new_params, zeros),
    }


def case_id(case: tuple[int, str]) -> str:
    return f"seed{SETS[case[0]][0]}_{case[0]}cls_{case[1]}"


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def case(request):
    return golden.load(*request.param), compute(*request.param)


@pytest.fixture(scope="module", params=[c for c in CASES if c[0] == 7], ids=case_id)
def case7(request):
    return golden.load(*request.param), compute(*request.param)


def test_the_goldens_tell_the_wirings_apart():
    """The 2021 figures differ from the 2023 ones far beyond the tolerances, so the tests of each
    wiring would fail the other's model."""
    a, b = golden.load(7, "2023"), golden.load(7, "2021")
    assert np.abs(a["logits_global"] - b["logits_global"]).max() > 1e3 * 5e-5
    assert np.array_equal(a["logits_local"], b["logits_local"])
    assert abs(float(a["loss"]) - float(b["loss"])) > 1e2 * 1e-5


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_eval_logits(case):
    g, r = case
    local, glob = r["eval"]
    np.testing.assert_allclose(local, g["logits_local"], rtol=0, atol=5e-5)
    np.testing.assert_allclose(glob, g["logits_global"], rtol=0, atol=5e-5)
    np.testing.assert_allclose(fused_logits(local, glob), g["logits"], rtol=0, atol=5e-5)


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_train_logits_and_loss(case):
    g, r = case
    local, glob = r["train"]
    np.testing.assert_allclose(local, g["logits_train_local"], rtol=0, atol=5e-5)
    np.testing.assert_allclose(glob, g["logits_train_global"], rtol=0, atol=5e-5)
    np.testing.assert_allclose(fused_logits(local, glob), g["logits_train"], rtol=0, atol=5e-5)
    np.testing.assert_allclose(r["loss"], g["loss"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(r["parts"]["loss_local"], g["loss_local"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(r["parts"]["loss_global"], g["loss_global"], rtol=0, atol=1e-5)


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
@pytest.mark.parametrize("stage", STAGES + ["stem", "avgpool_local", "avgpool_global"])
def test_stage_activations(case7, stage):
    g, r = case7
    ours = np.asarray(r["stages"][stage])
    if stage == "stem":
        ours, key = ours[:1].transpose(0, 3, 1, 2), "act/maxpool_sample0"
    elif stage.startswith("avgpool"):
        ours, key = ours[:, :, None, None], f"act/{stage}"
    else:
        ours, key = ours.transpose(0, 3, 1, 2), f"act/{stage}"
    index, values, shape, max_abs = golden.subsampled(g, key)
    assert ours.shape == shape
    np.testing.assert_allclose(ours.reshape(-1)[index], values, rtol=0, atol=1e-5 * max_abs)


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_heads_are_the_logits(case7):
    g, r = case7
    np.testing.assert_allclose(r["eval"][0], g["act/fc_1@values"].reshape(g["logits_local"].shape), atol=5e-5)
    np.testing.assert_allclose(r["eval"][1], g["act/fc_2@values"].reshape(g["logits_global"].shape), atol=5e-5)


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_batchnorm_running_statistics(case7):
    g, r = case7
    keys = [k[len("buffer_after/"):] for k in g if k.startswith("buffer_after/")]
    assert len(keys) == 312
    for key in keys:
        expected = g[f"buffer_after/{key}"]
        if key.endswith("num_batches_tracked"):
            assert int(r["buffers"][key]) == 1 == int(expected), key
        else:
            np.testing.assert_allclose(r["buffers"][key], expected, rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_gradient_norms(case):
    g, r = case
    ours = np.array([np.linalg.norm(np.asarray(r["grads"][k], np.float64)) for k in g["param_keys"]])
    ref = g["grad_norm"]
    bad = np.abs(ours - ref) > 3e-2 * ref + 3e-5
    assert not bad.any(), [(k, a, b) for k, a, b, x in zip(g["param_keys"], ours, ref, bad) if x]


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_gradients(case7):
    g, r = case7
    for key in g["grad_subset_keys"]:
        index, values, _, _ = golden.subsampled(g, f"grad/{key}")
        ours = np.asarray(r["grads"][key]).reshape(-1)[index]
        if "SpatialGate.spatial.bn" in key:
            np.testing.assert_allclose(ours, values, rtol=0, atol=3e-5, err_msg=key)
        else:
            limit = 1e-5 if key.startswith("fc_") else 5e-2
            assert golden.rel_l2(ours, values) <= limit, (key, golden.rel_l2(ours, values))


@pytest.mark.slow  # MA-Net compiled at 224x224 (the golden sets)
def test_sgd_step(case):
    g, r = case
    deltas = {k: np.asarray(r["new_params"][k], np.float32) - np.asarray(r["params"][k], np.float32)
              for k in g["param_keys"]}
    ours = np.array([np.linalg.norm(deltas[k].astype(np.float64)) for k in g["param_keys"]])
    ref = g["step_delta_norm"]
    bad = np.abs(ours - ref) > 3e-2 * ref + 1e-6
    assert not bad.any(), [(k, a, b) for k, a, b, x in zip(g["param_keys"], ours, ref, bad) if x]
    for key in g.get("grad_subset_keys", []):
        index, after, _, _ = golden.subsampled(g, f"param_after_step/{key}")
        before = np.asarray(r["params"][key]).reshape(-1)[index]
        ref_delta = after.astype(np.float64) - before
        ours_delta = deltas[key].reshape(-1)[index]
        if ref_delta.size == 1:
            np.testing.assert_allclose(ours_delta, ref_delta, rtol=0, atol=1e-6, err_msg=key)
        else:
            assert golden.rel_l2(ours_delta, ref_delta) <= 5e-2, key


@pytest.mark.slow  # a process of its own: MA-Net at 224x224 in float64
def test_float64_replica():
    """With jax x64 the port, vmapped or unrolled branches, each wiring, matches the float64 replica
    tightly (own process)."""
    script = Path(__file__).with_name("parity_float64.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_branch_execution_and_wiring_are_named():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(MANet(7).init, jax.random.key(0), x)  # traced, not compiled
    with pytest.raises(ValueError, match="branch_execution must be one of .*'pmap'"):
        jax.eval_shape(MANet(7, branch_execution="pmap").apply, variables, x)
    with pytest.raises(ValueError, match="multiscale_wiring must be one of .*'2022'"):
        jax.eval_shape(MANet(7, multiscale_wiring="2022").apply, variables, x)
