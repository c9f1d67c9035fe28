"""MA-Net: feature pre-extractor, local attention module and global multi-scale module."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from manet_jax.errors import ConfigError
from manet_jax.models.blocks import MULTISCALE_WIRINGS, BasicBlock, MulScaleBlock, ResLayer
from manet_jax.models.layers import BatchNorm, accum_dtype, conv, linear, max_pool_3x3_s2

Dtype = Any
BETA = 0.6
QUADRANTS = ("p1", "p2", "p3", "p4")


class LocalBranch(nn.Module):
    """One local attention branch: `layer3_1` (AttentionBlocks 128->256, stride 2), `layer4_1` (256->512)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, patch: jax.Array, train: bool) -> jax.Array:
        kwargs = {"attention": True}
        patch = ResLayer(BasicBlock, 256, 2, block_kwargs=kwargs, dtype=self.dtype, name="layer3_1")(patch, train)
        return ResLayer(BasicBlock, 512, 1, block_kwargs=kwargs, dtype=self.dtype, name="layer4_1")(patch, train)


# The four branches p1..p4 run as one lifted module: every parameter, BatchNorm statistic and
# intermediate carries a leading axis of 4 (index k-1 = the reference's `layer3_1_pk`/`layer4_1_pk`).
# Each branch still sees only its own quadrant and has its own weights and statistics. Two ways
# to run them, with the same variables and numbers: "vmap" makes the four one batched computation
# (measured 18% faster training on an H100), "unrolled" runs them one after another (XLA:CPU turns
# the batched convolutions into grouped ones, which made CPU training 4x slower).
_BRANCH_AXES = {"variable_axes": {"params": 0, "batch_stats": 0, "intermediates": 0},
                "split_rngs": {"params": True}}
BRANCH_EXECUTION = ("vmap", "unrolled")


def branch_execution_for(platform: str) -> str:
    """The faster branch execution on devices of `platform` ('cpu', 'gpu', 'tpu'): the platform
    the program is compiled for, which need not be the one tracing it."""
    return "unrolled" if platform == "cpu" else "vmap"


def run_local_branches(branch: LocalBranch, quadrants: jax.Array, train: bool, execution: str) -> jax.Array:
    """Apply `branch` (its variables stacked over a leading axis of 4) to `quadrants` (4, N, h, w, C)."""
    if execution not in BRANCH_EXECUTION:
        raise ValueError(f"branch_execution must be one of {BRANCH_EXECUTION}, not {execution!r}")
    if execution == "vmap":
        return nn.vmap(lambda mdl, q: mdl(q, train), in_axes=0, out_axes=0, axis_size=len(QUADRANTS),
                       **_BRANCH_AXES)(branch, quadrants)
    _, out = nn.scan(lambda mdl, carry, q: (carry, mdl(q, train)), length=len(QUADRANTS),
                     unroll=len(QUADRANTS), **_BRANCH_AXES)(branch, None, quadrants)
    return out


class MANet(nn.Module):
    """MA-Net (Zhao, Liu, Wang, IEEE TIP 2021) in NHWC.

    `__call__(images, train)` takes float images in [0, 1], (N, H, W, 3), and returns
    `(logits_local, logits_global)` like the reference. At 224x224 the local branches see exactly
    the reference's 14x14 quadrants of the 28x28 layer2 map; at other sizes each quadrant is half
    of the (even-sized) map. Parameter and BatchNorm names mirror the reference state_dict.

    The four local branches are one lifted module, `local_branches`, whose variables carry a
    leading axis of 4 for the quadrants p1..p4 (`manet_jax.convert` maps the reference's
    `layer3_1_pk`/`layer4_1_pk` names onto it); `branch_execution` picks how they run (see
    `branch_execution_for`). `multiscale_wiring` is the official code's version of the
    multi-scale blocks' second cascade (see `MULTISCALE_WIRINGS`); it changes no variable.

    Intermediates are sown into the `intermediates` collection (apply with
    `mutable=['intermediates']`): `stem` (max-pool output), `<layer>/output` for every layer,
    `avgpool_local` and `avgpool_global` (pooled features), and each CBAM's
    `.../cbam/SpatialGate/spatial_attention` (N, H, W); inside `local_branches` they are stacked
    over the quadrants. `stage_outputs` names them as the reference does and
    `local_attention_map` tiles the four branches' last attention maps.
    """

    num_classes: int = 7
    dtype: Dtype = jnp.float32
    branch_execution: str = "vmap"  # or "unrolled"; see branch_execution_for
    multiscale_wiring: str = MULTISCALE_WIRINGS[0]

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        features = self.pre_extractor(images.astype(self.dtype), train)
        logits_local = self.local_attention(features, train)
        logits_global = self.multi_scale(features, train)
        return logits_local, logits_global

    def pre_extractor(self, x: jax.Array, train: bool) -> jax.Array:
        """ResNet-18 stem, layer1 and layer2: the (N, H/8, W/8, 128) feature map F."""
        x = conv(64, 7, 2, name="conv1", dtype=self.dtype)(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
        x = max_pool_3x3_s2(x)
        self.sow("intermediates", "stem", x)
        x = ResLayer(BasicBlock, 64, 1, dtype=self.dtype, name="layer1")(x, train)
        x = ResLayer(BasicBlock, 128, 2, dtype=self.dtype, name="layer2")(x, train)
        return x

    def local_attention(self, features: jax.Array, train: bool) -> jax.Array:
        """Four independent AttentionBlock branches, one per quadrant, re-tiled, pooled, `fc_1`."""
        _, height, width, _ = features.shape
        if height % 2 or width % 2:
            raise ValueError(
                f"MA-Net's local branch splits the layer2 map into four equal quadrants, but the map is "
                f"{height}x{width} (odd). Use an input size divisible by 16 (224 as in the paper).")
        # Equal halves: the reference's fixed 14x14 slices at 224. jnp.split (rather than slicing)
        # keeps exports with a symbolic batch size convertible to TFLite.
        top, bottom = jnp.split(features, 2, axis=1)
        quadrants = jnp.stack([*jnp.split(top, 2, axis=2), *jnp.split(bottom, 2, axis=2)])
        branch = LocalBranch(dtype=self.dtype, name="local_branches")
        # Initialised through vmap whatever the execution, so the initial weights are the same.
        execution = "vmap" if self.is_initializing() else self.branch_execution
        p1, p2, p3, p4 = run_local_branches(branch, quadrants, train, execution)
        local_map = jnp.concatenate([jnp.concatenate([p1, p2], 2), jnp.concatenate([p3, p4], 2)], 1)
        return self.head(local_map, "avgpool_local", "fc_1")

    def multi_scale(self, features: jax.Array, train: bool) -> jax.Array:
        """Global branch: two MulScaleBlock layers (`layer3_2`, `layer4_2`), pooled, `fc_2`."""
        kwargs = {"wiring": self.multiscale_wiring}
        x = ResLayer(MulScaleBlock, 256, 2, block_kwargs=kwargs, dtype=self.dtype, name="layer3_2")(features, train)
        x = ResLayer(MulScaleBlock, 512, 2, block_kwargs=kwargs, dtype=self.dtype, name="layer4_2")(x, train)
        return self.head(x, "avgpool_global", "fc_2")

    def head(self, x: jax.Array, pool_name: str, fc_name: str) -> jax.Array:
        """Global average pooling (sown as `pool_name`), then the linear head `fc_name`."""
        pooled = x.astype(accum_dtype(self.dtype)).mean(axis=(1, 2))
        self.sow("intermediates", pool_name, pooled)
        logits = linear(self.num_classes, x.shape[-1], name=fc_name, dtype=self.dtype)(pooled)
        return logits.astype(accum_dtype(self.dtype))


GFLOPS_FORWARD_224 = 7.277  # one 224x224 forward: 2 x 3.638 G multiply-adds (its convolutions and linear layers)


def model_flops(mode: str, batch: int, image_size: int) -> float:
    """FLOPs of one train or eval step on `batch` images from the paper model's count (training
    ~ 3x the forward)."""
    return GFLOPS_FORWARD_224 * 1e9 * (image_size / 224) ** 2 * batch * (3 if mode == "train" else 1)


def check_image_size(size: int, key: str) -> None:
    """Raises ConfigError naming `key` unless `size` suits MA-Net: a multiple of 16, so that the
    local branch splits the layer2 map into four equal quadrants."""
    if size < 16 or size % 16:
        raise ConfigError(f"{key}={size}: MA-Net needs an input size that is a positive multiple of 16 "
                          "(224 as in the paper)")


INIT_SIZE = 64  # the input size models are initialised with: no parameter shape depends on it


@functools.cache
def _jitted_init(model: MANet) -> Callable:
    return jax.jit(model.init)


def init_variables(model: MANet, rng: jax.Array) -> dict[str, Any]:
    """Freshly initialised variables of `model` (the reference's default initialisation), as NumPy
    arrays; the same for every dtype, branch execution and wiring."""
    model = model.clone(dtype=jnp.float32, branch_execution="vmap", multiscale_wiring=MULTISCALE_WIRINGS[0])
    return jax.device_get(_jitted_init(model)(rng, jnp.zeros((1, INIT_SIZE, INIT_SIZE, 3))))


def variable_shapes(num_classes: int) -> dict[str, Any]:
    """MANet's variable tree as `jax.ShapeDtypeStruct`s (nothing is computed)."""
    return jax.eval_shape(MANet(num_classes).init, jax.random.key(0), jnp.zeros((1, INIT_SIZE, INIT_SIZE, 3)))


def fused_logits(logits_local: jax.Array, logits_global: jax.Array, beta: float = BETA) -> jax.Array:
    """The prediction logits: beta * local + (1 - beta) * global (raw logits, as the reference)."""
    return beta * logits_local + (1.0 - beta) * logits_global


def manet_loss(logits_local: jax.Array, logits_global: jax.Array, labels: jax.Array,
               beta: float = BETA, weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """beta * CE(local) + (1 - beta) * CE(global), each the mean over (weighted) examples.

    Returns the loss and a dict with `loss_local` and `loss_global`.
    """
    ce_local = optax.softmax_cross_entropy_with_integer_labels(logits_local, labels)
    ce_global = optax.softmax_cross_entropy_with_integer_labels(logits_global, labels)
    if weights is None:
        weights = jnp.ones_like(ce_local)
    total = weights.sum()
    loss_local = (ce_local * weights).sum() / total
    loss_global = (ce_global * weights).sum() / total
    return beta * loss_local + (1.0 - beta) * loss_global, {"loss_local": loss_local, "loss_global": loss_global}


def stage_outputs(intermediates: dict) -> dict[str, jax.Array]:
    """The sown stage outputs under the reference's module names (`layer3_1_p1`, ..., `layer4_2`)."""
    out = {"stem": intermediates["stem"][0]}
    out |= {name: intermediates[name]["output"][0] for name in ("layer1", "layer2")}
    branches = intermediates["local_branches"]
    for k, quadrant in enumerate(QUADRANTS):
        for layer in ("layer3_1", "layer4_1"):
            out[f"{layer}_{quadrant}"] = branches[layer]["output"][0][k]
    out |= {name: intermediates[name]["output"][0] for name in ("layer3_2", "layer4_2")}
    out |= {name: intermediates[name][0] for name in ("avgpool_local", "avgpool_global")}
    return out


def local_attention_map(intermediates: dict) -> jax.Array:
    """The last CBAM spatial attention of each local branch, re-tiled like the quadrants: (N, H, W)."""
    p1, p2, p3, p4 = intermediates["local_branches"]["layer4_1"]["1"]["cbam"]["SpatialGate"]["spatial_attention"][0]
    return jnp.concatenate([jnp.concatenate([p1, p2], 2), jnp.concatenate([p3, p4], 2)], 1)
