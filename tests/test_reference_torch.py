"""Validates the independently written PyTorch MA-Net (tests/reference), wired as the official code of 2023
and of 2021, against the golden numerics of the official model of each."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import golden

torch = pytest.importorskip("torch")

from reference.manet_torch import MANet  # noqa: E402

LOGITS_ATOL = 5e-5
LOSS_ATOL = 1e-5
ACT_RTOL = 1e-5
BUFFER_ATOL = 1e-5
HOOKED = ("maxpool", "layer2", "layer3_2", "layer4_2", "avgpool", "fc_1", "fc_2",
          *(f"layer{i}_1_p{k}" for i in (3, 4) for k in range(1, 5)))


def run_reference(num_classes: int, wiring: str = "2023") -> dict[str, np.ndarray]:
    """One eval forward (with stage activations) and one train forward of the golden model."""
    torch.set_num_threads(2)
    g = golden.load(num_classes, wiring)
    seed = int(g["seed"])
    x, y = golden.inputs(seed, len(g["y"]), num_classes)
    np.testing.assert_array_equal(y, g["y"])
    model = MANet(num_classes, multiscale_wiring=wiring)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in golden.state_dict(seed, num_classes).items()})
    acts: dict[str, list[np.ndarray]] = {}

    def hook(name: str):
        return lambda module, inputs, output: acts.setdefault(name, []).append(output.detach().numpy().copy())

    handles = [getattr(model, name).register_forward_hook(hook(name)) for name in HOOKED]
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        model.eval()
        out["logits_local"], out["logits_global"] = (t.numpy() for t in model(torch.from_numpy(x)))
        for handle in handles:
            handle.remove()
        model.train()
        local, glob = model(torch.from_numpy(x))
    labels = torch.from_numpy(y)
    loss_local = torch.nn.functional.cross_entropy(local, labels)
    loss_global = torch.nn.functional.cross_entropy(glob, labels)
    out.update(logits_train_local=local.numpy(), logits_train_global=glob.numpy(),
               loss_local=loss_local.numpy(), loss_global=loss_global.numpy(),
               loss=(0.6 * loss_local + 0.4 * loss_global).numpy())
    out["logits"] = 0.6 * out["logits_local"] + 0.4 * out["logits_global"]
    out["logits_train"] = 0.6 * out["logits_train_local"] + 0.4 * out["logits_train_global"]
    for name, (value, *rest) in acts.items():
        if name == "avgpool":
            out["act/avgpool_local"], out["act/avgpool_global"] = value, *rest
        elif name == "maxpool":
            out["act/maxpool_sample0"] = value[:1]
        else:
            out[f"act/{name}"] = value
    out.update({f"buffer_after/{k}": v.numpy() for k, v in model.state_dict().items()
                if "running_" in k or "num_batches_tracked" in k})
    return out


@functools.cache
def figures(num_classes: int, wiring: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the independently written model's figures, the official ones) of a golden set."""
    return run_reference(num_classes, wiring), golden.load(num_classes, wiring)


@pytest.fixture(params=[(7, "2023"), (8, "2023"), (7, "2021")], ids=lambda c: f"{c[0]}cls_{c[1]}")
def reference(request) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return figures(*request.param)


@pytest.fixture(params=["2023", "2021"])
def reference7(request) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return figures(7, request.param)


def test_state_dict_matches_key_table() -> None:
    for wiring in ("2023", "2021"):
        state = MANet(7, multiscale_wiring=wiring).state_dict()
        assert [(k, tuple(v.shape)) for k, v in state.items()] == [(k, s) for k, s, _ in golden.key_table()]
    assert MANet(8).fc_2.weight.shape == (8, 512)
    with pytest.raises(ValueError, match="wiring must be one of"):
        MANet(7, multiscale_wiring="2022")


@pytest.mark.slow  # the PyTorch reference at 224x224
@pytest.mark.parametrize("mode", ["", "_train"])
def test_logits(reference, mode: str) -> None:
    ours, g = reference
    for suffix in ("", "_local", "_global"):
        key = f"logits{mode}{suffix}"
        np.testing.assert_allclose(ours[key], g[key], rtol=0, atol=LOGITS_ATOL, err_msg=key)


@pytest.mark.slow  # the PyTorch reference at 224x224
def test_loss(reference) -> None:
    ours, g = reference
    for key in ("loss", "loss_local", "loss_global"):
        np.testing.assert_allclose(ours[key], g[key], rtol=0, atol=LOSS_ATOL, err_msg=key)


@pytest.mark.slow  # the PyTorch reference at 224x224
def test_activations(reference7) -> None:
    reference7, g = reference7
    keys = sorted(k.removesuffix("@values") for k in g if k.startswith("act/") and k.endswith("@values"))
    assert set(keys) == {k for k in reference7 if k.startswith("act/")}
    for key in keys:
        index, values, shape, max_abs = golden.subsampled(g, key)
        ours = reference7[key]
        assert ours.shape == shape, key
        np.testing.assert_allclose(ours.reshape(-1)[index], values, rtol=0, atol=ACT_RTOL * max_abs, err_msg=key)


@pytest.mark.slow  # the PyTorch reference at 224x224
def test_bn_buffers_after_train_forward(reference7) -> None:
    reference7, g = reference7
    keys = [k for k in g if k.startswith("buffer_after/")]
    assert len(keys) == 312 and set(keys) == {k for k in reference7 if k.startswith("buffer_after/")}
    for key in keys:
        if key.endswith("num_batches_tracked"):
            assert reference7[key] == 1 == g[key], key
        else:
            np.testing.assert_allclose(reference7[key], g[key], rtol=0, atol=BUFFER_ATOL, err_msg=key)
