"""Conversion between reference PyTorch state_dicts and MANet's Flax variables."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import flax
import jax
import numpy as np

from manet_jax.convert.mapping import LEAVES, module_kind, reference_order, to_flax_layout, to_torch_layout
from manet_jax.errors import ManetError
from manet_jax.models import MANet, init_variables, variable_shapes
from manet_jax.models.manet import QUADRANTS

STACKED = "local_branches"  # the vmapped local branches: leaves stacked over QUADRANTS

Variables = dict[str, Any]
HEAD_LAYERS = ("fc_1", "fc_2")  # the reference's linear heads (local, global)


class StateDictMismatchError(ManetError, ValueError):
    """A state_dict does not fit MANet: lists every missing, unexpected and misshapen key."""


@dataclasses.dataclass
class Conversion:
    """Converted variables and where each reference key came from."""

    variables: Variables
    loaded: list[str]  # reference keys taken from the checkpoint
    initialised: list[str]  # reference keys freshly initialised
    dropped: list[str]  # checkpoint keys not used

    def summary(self) -> str:
        """A table of loaded / freshly initialised / dropped keys, grouped by top-level module."""
        rows = []
        for status, keys in (("loaded", self.loaded), ("initialised fresh", self.initialised),
                             ("dropped", self.dropped)):
            groups: dict[str, int] = {}
            for key in keys:
                groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
            rows += [f"  {status:<18} {group:<14} {count:>4} tensors" for group, count in groups.items()]
        return "\n".join([f"  {'status':<18} {'module':<14} {'count':>4}"] + rows)


def to_numpy(value: Any) -> np.ndarray:
    """An array or tensor (torch tensors included, without importing torch) as a NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def normalise_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The official checkpoint formats as a plain state_dict: unwraps `state_dict`, strips `module.`."""
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    out = {}
    for key, value in checkpoint.items():
        if not isinstance(key, str):
            raise StateDictMismatchError(f"state_dict keys must be strings, got {key!r}")
        out[key.removeprefix("module.")] = to_numpy(value)
    return out


@functools.cache
def _template(num_classes: int) -> Variables:
    """MANet's variable tree as zero-cost read-only arrays of the right shapes and dtypes."""
    return jax.tree_util.tree_map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape),
                                  variable_shapes(num_classes))


class Target(NamedTuple):
    """Where a reference key lives in MANet's variables."""

    collection: str  # 'params' or 'batch_stats'
    path: tuple[str, ...]  # Flax path of the leaf
    kind: str  # module kind: 'conv', 'linear' or 'bn'
    index: int | None  # quadrant index into a stacked `local_branches` leaf, else None

    def get(self, variables: Variables) -> Any:
        value = _get(variables[self.collection], self.path)
        return value if self.index is None else value[self.index]

    def set(self, variables: Variables, value: np.ndarray) -> None:
        if self.index is None:
            _set(variables[self.collection], self.path, value)
        else:
            _get(variables[self.collection], self.path)[self.index] = value


def reference_keys(variables: Variables) -> dict[str, Target]:
    """Reference key -> its Target, in the reference's order.

    The module path is the key's (`.` -> nesting), except that `local_branches/<layer>` holds the
    stacked `<layer>_p1` ... `<layer>_p4` of the reference.
    """
    params = flax.traverse_util.flatten_dict(variables["params"])
    modules: dict[tuple[str, ...], dict] = {}
    for path, value in params.items():
        modules.setdefault(path[:-1], {})[path[-1]] = value
    out = {}
    for path, leaves in modules.items():
        stacked = path[0] == STACKED
        kind = module_kind(leaves, stacked)
        for torch_leaf, (collection, flax_leaf) in LEAVES[kind].items():
            if stacked:
                for index, quadrant in enumerate(QUADRANTS):
                    key = ".".join((f"{path[1]}_{quadrant}",) + path[2:] + (torch_leaf,))
                    out[key] = Target(collection, path + (flax_leaf,), kind, index)
            else:
                out[".".join(path + (torch_leaf,))] = Target(collection, path + (flax_leaf,), kind, None)
    return dict(sorted(out.items(), key=lambda item: reference_order(item[0])))


def num_classes_of(state_dict: Mapping[str, Any]) -> int:
    """The head size of a (normalised) MA-Net state_dict."""
    if "fc_1.weight" not in state_dict:
        raise StateDictMismatchError("not an MA-Net state_dict: it has no `fc_1.weight` (local head)")
    return int(np.shape(state_dict["fc_1.weight"])[0])


def import_state_dict(checkpoint: Mapping[str, Any], num_classes: int | None = None,
                      rng: jax.Array | None = None, allow_missing: bool = False) -> Conversion:
    """Reference MA-Net state_dict -> MANet variables, with a report.

    `checkpoint` may be a state_dict, a dict holding one under `state_dict` (the official
    `.pth.tar`), with or without DataParallel's `module.` prefix. When `num_classes` differs from
    the checkpoint's heads (e.g. the 12,666-way MS-Celeb pre-training heads), `fc_1` and `fc_2`
    are freshly initialised from `rng` and reported. With `allow_missing`, keys missing from
    the checkpoint are initialised fresh instead of being an error (partial imports).
    """
    state_dict = normalise_state_dict(checkpoint)
    source_classes = num_classes_of(state_dict) if "fc_1.weight" in state_dict or not allow_missing else None
    num_classes = num_classes or source_classes
    if num_classes is None:
        raise StateDictMismatchError("num_classes is needed: the checkpoint has no MA-Net heads to take it from")
    dropped = []
    if source_classes is not None and source_classes != num_classes:
        dropped = [k for k in state_dict if k.split(".")[0] in HEAD_LAYERS]
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
        allow_missing_keys = {k for k in reference_keys(_template(num_classes)) if k.split(".")[0] in HEAD_LAYERS}
    else:
        allow_missing_keys = set()
    template = _template(num_classes)
    targets = reference_keys(template)

    missing, wrong_shape = [], []
    for key, target in targets.items():
        torch_leaf = key.rsplit(".", 1)[1]
        if key not in state_dict:
            if not (allow_missing or key in allow_missing_keys or torch_leaf == "num_batches_tracked"):
                missing.append(key)
            continue
        expected = target.get(template).shape
        if to_flax_layout(target.kind, torch_leaf, state_dict[key]).shape != expected:
            wanted = to_torch_layout(target.kind, torch_leaf, np.zeros(expected)).shape
            wrong_shape.append(f"{key}: checkpoint {tuple(np.shape(state_dict[key]))}, expected {wanted}")
    unexpected = [k for k in state_dict if k not in targets]
    if missing or wrong_shape or unexpected:
        lines = [f"state_dict does not match MANet(num_classes={num_classes}):"]
        for title, keys in (("missing", missing), ("wrong shape", wrong_shape), ("unexpected", unexpected)):
            if keys:
                lines += [f"  {len(keys)} {title}:"] + [f"    {k}" for k in keys]
        raise StateDictMismatchError("\n".join(lines))

    fresh = [k for k in targets if k not in state_dict and not k.endswith("num_batches_tracked")]
    if fresh:
        rng = jax.random.key(0) if rng is None else rng
        variables = jax.tree_util.tree_map(np.array, init_variables(MANet(num_classes), rng))
    else:  # everything comes from the checkpoint: no initialisation to compile
        variables = jax.tree_util.tree_map(np.zeros_like, template)
    loaded = []
    for key, target in targets.items():
        if key in state_dict:
            value = to_flax_layout(target.kind, key.rsplit(".", 1)[1], state_dict[key])
            target.set(variables, np.array(value, target.get(template).dtype))  # a copy: no shared memory
            loaded.append(key)
    return Conversion(variables, loaded, fresh, dropped)


def import_resnet18(checkpoint: Mapping[str, Any], num_classes: int, rng: jax.Array | None = None) -> Conversion:
    """An ImageNet ResNet-18 state_dict (torchvision names) -> MANet variables, with a report.

    stem, layer1 and layer2 load one to one; torchvision `layer3`/`layer4` blocks go into each
    of the four local branches (CBAM fresh); each MulScaleBlock takes `conv1`, `bn1` and
    `downsample` of the matching block; everything else (cascades, heads) is fresh.
    """
    state_dict = normalise_state_dict(checkpoint)
    mapped, dropped = {}, []
    for key, value in state_dict.items():
        top, _, rest = key.partition(".")
        if top in ("conv1", "bn1", "layer1", "layer2"):
            mapped[key] = value
        elif top in ("layer3", "layer4"):
            for quadrant in QUADRANTS:
                mapped[f"{top}_1_{quadrant}.{rest}"] = value
            if rest.split(".")[1] in ("conv1", "bn1", "downsample"):
                mapped[f"{top}_2.{rest}"] = value
        else:
            dropped.append(key)
    conversion = import_state_dict(mapped, num_classes, rng, allow_missing=True)
    conversion.dropped = dropped
    return conversion


def is_resnet18(state_dict: Mapping[str, Any]) -> bool:
    """Whether a (normalised) state_dict has torchvision ResNet names rather than MA-Net's."""
    return "layer3.0.conv1.weight" in state_dict and "layer3_2.0.conv1.weight" not in state_dict


def torch_to_flax(state_dict: Mapping[str, Any], num_classes: int | None = None,
                  rng: jax.Array | None = None) -> Variables:
    """Reference PyTorch state_dict (key -> numpy array or torch tensor) -> `{'params', 'batch_stats'}`."""
    return import_state_dict(state_dict, num_classes, rng).variables


def flax_to_torch(variables: Variables) -> dict[str, np.ndarray]:
    """MANet variables -> the reference state_dict (NumPy arrays, reference names, layouts and order)."""
    return {key: to_torch_layout(target.kind, key.rsplit(".", 1)[1], np.asarray(target.get(variables)))
            for key, target in reference_keys(variables).items()}


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree[part]
    tree[path[-1]] = value
