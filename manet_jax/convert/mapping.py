"""The name and layout table between the reference PyTorch state_dict and MANet's variables.

The Flax module tree mirrors the reference module tree, so a reference key splits into a module
path (identical on both sides, `.` -> nesting) and a leaf, and only the leaf is translated. The
one exception is the vmapped local branches: `layer3_1_pk.<rest>` / `layer4_1_pk.<rest>` are
index k-1 of the stacked leaves under `local_branches/layer3_1/<rest>` / `.../layer4_1/<rest>`.

| reference leaf        | module     | Flax collection / leaf           | layout                  |
|-----------------------|------------|----------------------------------|-------------------------|
| `weight`              | Conv2d     | params / `kernel`                | OIHW -> HWIO            |
| `weight`              | Linear     | params / `kernel`                | (out, in) -> (in, out)  |
| `bias`                | Linear     | params / `bias`                  |                         |
| `weight`, `bias`      | BatchNorm  | params / `scale`, `bias`         |                         |
| `running_mean`, `running_var` | BatchNorm | batch_stats / `mean`, `var` |                     |
| `num_batches_tracked` | BatchNorm  | batch_stats / `num_batches_tracked` | int64 <-> int32      |
"""

from __future__ import annotations

import numpy as np

from manet_jax.models.manet import QUADRANTS

# module kind -> reference leaf -> (collection, Flax leaf)
LEAVES = {
    "conv": {"weight": ("params", "kernel")},
    "linear": {"weight": ("params", "kernel"), "bias": ("params", "bias")},
    "bn": {"weight": ("params", "scale"), "bias": ("params", "bias"),
           "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
           "num_batches_tracked": ("batch_stats", "num_batches_tracked")},
}

# Registration order of the reference modules, so exported state_dicts list keys as PyTorch does.
ORDER = (
    ["conv1", "bn1", "layer1", "layer2"]
    + [f"layer{j}_1_{p}" for p in QUADRANTS for j in (3, 4)]
    + ["layer3_2", "layer4_2", "fc_1", "fc_2", "conv2", "bn2"]
    + [f"{m}{c}_2_{k}" for c in (1, 2) for k in (1, 2, 3, 4) for m in ("conv", "bn")]
    + ["downsample", "cbam", "ChannelGate", "SpatialGate", "mlp", "spatial", "conv", "bn"]
    + ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
)
_RANK = {name: i for i, name in enumerate(ORDER)}


def module_kind(leaves: dict, stacked: bool = False) -> str:
    """'bn', 'conv' or 'linear', from a module's parameter leaves (with a leading stack axis if `stacked`)."""
    if "scale" in leaves:
        return "bn"
    return "conv" if len(np.shape(leaves["kernel"])) - stacked == 4 else "linear"


def to_flax_layout(kind: str, leaf: str, value: np.ndarray) -> np.ndarray:
    """A reference tensor in the Flax layout."""
    if leaf == "weight" and kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "weight" and kind == "linear":
        return np.transpose(value)
    if leaf == "num_batches_tracked":
        return np.asarray(value, np.int32)
    return value


def to_torch_layout(kind: str, leaf: str, value: np.ndarray) -> np.ndarray:
    """A Flax array in the reference layout."""
    if leaf == "weight" and kind == "conv":
        return np.transpose(value, (3, 2, 0, 1))
    if leaf == "weight" and kind == "linear":
        return np.transpose(value)
    if leaf == "num_batches_tracked":
        return np.asarray(value, np.int64)
    return value


def reference_order(key: str) -> tuple[int, ...]:
    """Sort key that puts reference state_dict keys in PyTorch's registration order."""
    return tuple(int(part) if part.isdigit() else len(ORDER) + 100 + _RANK[part] for part in key.split("."))
