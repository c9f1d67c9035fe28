"""Golden numerics of the official PyTorch MA-Net at any commit, in the shared golden layout.

Run by hand from the repository root (torch 2.13.0 CPU, as the shared goldens):
        python scripts/make_golden.py --reference-repo MA-Net OUT.npz

MA-Net is a clone of github.com/zengqunzhao/MA-Net checked out at the commit to measure, e.g.
`git -C MA-Net checkout aaf8788` for the 2021 multi-scale wiring. Its `model/manet.py` runs
unmodified (imported by `manet_jax.reference_model`; this script holds no model code) on the golden
formula's parameters and inputs (`tests/golden.py`): an eval forward with stage outputs, one
train-mode forward with the loss 0.6 CE(local) + 0.4 CE(global), its backward and one
`torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)` step, then the same in float64. OUT
holds every array of the shared `manet_rng_seed0_7cls.npz` except the inputs `x`, with the same
names, order, dtypes and shapes; from a 923fa6c checkout it reproduces that file bit for bit.
`scripts/extract_golden.py` copies what the tests need into tests/data/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import golden  # noqa: E402  (tests/golden.py: the formula)
from manet_jax.reference_model import build_reference, load_reference  # noqa: E402

BETA = 0.6
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
# Hooked modules; `maxpool` keeps sample 0, `avgpool` runs twice (local, then global).
HOOKED = ["layer2"] + [f"layer{i}_1_p{k}" for k in range(1, 5) for i in (3, 4)] + ["layer3_2", "layer4_2",
                                                                                    "fc_1", "fc_2"]
ACTIVATIONS = ["maxpool_sample0", *HOOKED[:9], "avgpool_local", "avgpool_global", "fc_1", "layer3_2", "layer4_2",
               "fc_2"]  # the shared file's order
HEADS = ("logits", "logits_local", "logits_global", "logits_train", "logits_train_local", "logits_train_global",
         "loss", "loss_local", "loss_global")


def run(module, state_dict: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, dtype: torch.dtype) -> dict:
    """Eval forward with hooks, one train forward, backward and SGD step of the reference in `dtype`."""
    model = build_reference(module, len(state_dict["fc_1.bias"]))
    if list(model.state_dict()) != list(state_dict):
        raise SystemExit("the reference's state_dict keys differ from the golden key table")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    model = model.to(dtype)
    x, y = torch.from_numpy(x).to(dtype), torch.from_numpy(y)
    acts: dict[str, torch.Tensor] = {}
    pooled: list[torch.Tensor] = []

    def keep(name: str):
        return lambda _module, _inputs, output: acts.__setitem__(name, output.detach().clone())

    handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in HOOKED + ["maxpool"]]
    handles.append(model.avgpool.register_forward_hook(lambda _m, _i, output: pooled.append(output.detach().clone())))
    model.eval()
    with torch.no_grad():
        local, glob = model(x)
    for handle in handles:
        handle.remove()
    acts["avgpool_local"], acts["avgpool_global"] = pooled
    acts["maxpool_sample0"] = acts.pop("maxpool")[:1]
    out = {"act": acts, "logits_local": local, "logits_global": glob, "logits": BETA * local + (1 - BETA) * glob}

    model.train()
    local, glob = model(x)
    criterion = torch.nn.CrossEntropyLoss()
    loss_local, loss_global = criterion(local, y), criterion(glob, y)
    loss = BETA * loss_local + (1 - BETA) * loss_global
    out |= {"logits_train_local": local.detach(), "logits_train_global": glob.detach(),
            "logits_train": (BETA * local + (1 - BETA) * glob).detach(), "loss": loss.detach(),
            "loss_local": loss_local.detach(), "loss_global": loss_global.detach(),
            "buffers": {k: v.detach().clone() for k, v in model.named_buffers()}}
    loss.backward()
    params = dict(model.named_parameters())
    out["grad"] = {k: p.grad.detach().clone() for k, p in params.items()}
    before = {k: p.detach().clone() for k, p in params.items()}
    torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY).step()
    out["param_after"] = {k: p.detach().clone() for k, p in params.items()}
    # p_new - p taken in float64, as the shared goldens do (in float32 it deviates by 6e-10 relative).
    out["delta"] = {k: p.detach().double() - before[k].double() for k, p in params.items()}
    return out


def norm64(t: torch.Tensor) -> float:
    return float(np.linalg.norm(t.numpy().astype(np.float64).ravel()))


def make(repo: str, seed: int, num_classes: int, batch: int) -> dict[str, np.ndarray]:
    torch.set_num_threads(2)
    module = load_reference(repo)
    state_dict = golden.state_dict(seed, num_classes)
    x, y = golden.inputs(seed, batch, num_classes)
    f32 = run(module, state_dict, x, y, torch.float32)
    f64 = run(module, state_dict, x, y, torch.float64)
    param_keys = list(f32["grad"])
    subset = [str(k) for k in golden.load(7)["grad_subset_keys"]]
    fill = np.array([[v.astype(np.float64).sum(), np.square(v.astype(np.float64)).sum()]
                     for v in state_dict.values()])
    out = {"seed": np.asarray(seed, np.int64), "num_classes": np.asarray(num_classes, np.int64),
           "gain": np.asarray(1.0), "y": np.asarray(y, np.int64), "fill_check": fill,
           "state_dict_keys": np.asarray(list(state_dict)), "param_keys": np.asarray(param_keys)}
    out |= {key: f32[key].numpy() for key in HEADS}
    out["grad_norm"] = np.asarray([norm64(f32["grad"][k]) for k in param_keys])
    out["step_delta_norm"] = np.asarray([norm64(f32["delta"][k]) for k in param_keys])
    out |= {f"act/{name}": f32["act"][name].numpy() for name in ACTIVATIONS}
    out |= {f"buffer_after/{k}": v.numpy() for k, v in f32["buffers"].items()}
    out["grad_subset_keys"] = np.asarray(subset)
    for key in subset:
        out[f"grad/{key}"] = f32["grad"][key].numpy()
        out[f"param_after_step/{key}"] = f32["param_after"][key].numpy()
        out[f"grad_f64/{key}"] = f64["grad"][key].numpy()
    out |= {"logits_eval_f64": f64["logits"].numpy(), "logits_train_f64": f64["logits_train"].numpy(),
            "loss_f64": f64["loss"].numpy(), "grad_norm_f64": np.asarray([norm64(f64["grad"][k]) for k in param_keys])}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-repo", required=True, help="clone of the official MA-Net at the commit to measure")
    parser.add_argument("output", type=Path, help="the .npz to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    out = make(args.reference_repo, args.seed, args.num_classes, args.batch)
    np.savez_compressed(args.output, **out)
    print(f"{args.output}: {len(out)} arrays, loss {float(out['loss']):.7f}")


if __name__ == "__main__":
    main()
