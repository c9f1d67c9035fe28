"""The residual blocks of MA-Net: BasicBlock, AttentionBlock (with CBAM) and MulScaleBlock.

Submodule names are the reference state_dict's (`conv1`, `bn1`, `downsample/0`, ...), so the
Flax parameter tree mirrors the PyTorch keys one to one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from manet_jax.models.layers import BatchNorm, accum_dtype, conv, linear

Dtype = Any


class Downsample(nn.Module):
    """`downsample`: 1x1 conv with stride (index 0), then BatchNorm (index 1)."""

    features: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.features, 1, self.stride, name="0", dtype=self.dtype)(x)
        return BatchNorm(dtype=self.dtype, name="1")(x, train)


class MLP(nn.Module):
    """CBAM's shared MLP; reference keys `mlp.1` and `mlp.3` (index 0 is a Flatten, 2 the ReLU)."""

    reduction: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, v: jax.Array) -> jax.Array:
        channels = v.shape[-1]
        hidden = channels // self.reduction
        v = nn.relu(linear(hidden, channels, name="1", dtype=self.dtype)(v))
        return linear(channels, hidden, name="3", dtype=self.dtype)(v)


class ChannelGate(nn.Module):
    """CBAM channel gate: sigmoid(MLP(avg-pool) + MLP(max-pool)), one MLP applied to each."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mlp = MLP(dtype=self.dtype, name="mlp")
        gate = nn.sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
        return x * gate[:, None, None, :].astype(x.dtype)


class ConvBN(nn.Module):
    """`spatial`: the spatial gate's 7x7 conv (2 -> 1 channels, no bias) and its BN (momentum 0.01)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(1, 7, name="conv", dtype=self.dtype)(x)
        return BatchNorm(momentum=0.01, dtype=self.dtype, name="bn")(x, train)


class SpatialGate(nn.Module):
    """CBAM spatial gate: [max, mean] over channels -> conv/BN -> sigmoid, multiplied in.

    Sows the attention map (N, H, W), float32 or wider, as `intermediates/.../spatial_attention`.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pooled = jnp.concatenate([x.max(axis=-1, keepdims=True), x.mean(axis=-1, keepdims=True)], -1)
        z = ConvBN(dtype=self.dtype, name="spatial")(pooled, train)
        attention = nn.sigmoid(z.astype(accum_dtype(self.dtype)))
        self.sow("intermediates", "spatial_attention", attention[..., 0])
        return x * attention.astype(x.dtype)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (reduction 16): channel gate, then spatial gate."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = ChannelGate(dtype=self.dtype, name="ChannelGate")(x)
        return SpatialGate(dtype=self.dtype, name="SpatialGate")(x, train)


class BasicBlock(nn.Module):
    """ResNet-18 basic block; with `attention=True` the AttentionBlock (CBAM before the add)."""

    features: int
    stride: int = 1
    attention: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = conv(self.features, 3, self.stride, name="conv1", dtype=self.dtype)(x)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train))
        out = conv(self.features, 3, name="conv2", dtype=self.dtype)(out)
        out = BatchNorm(dtype=self.dtype, name="bn2")(out, train)
        if self.attention:
            out = CBAM(dtype=self.dtype, name="cbam")(out, train)
        return nn.relu(out + _identity(x, self.features, self.stride, self.dtype, train))


# The official code's two wirings of cascade B (docs/conversion.md), by the date it was introduced:
# "2023" (923fa6c, 2023-04-15, the paper's Fig. 2) runs it chunk 4 -> 1; "2021" (aaf8788,
# 2021-01-21 until 2023-04-15: the training logs and the MS-Celeb checkpoint) chunk 1 -> 4.
MULTISCALE_WIRINGS = ("2023", "2021")


class MulScaleBlock(nn.Module):
    """Multi-scale block: a strided 3x3 conv, then two cascades over four channel chunks.

    Cascade A (`conv1_2_k`/`bn1_2_k`) runs chunk 1 -> 4; cascade B (`conv2_2_k`/`bn2_2_k`, module
    k always on chunk k) runs chunk 4 -> 1 with `wiring="2023"` and 1 -> 4 with "2021". Each step
    adds the previous step's ReLU'd output to the next chunk. The concatenated pre-ReLU BN outputs
    of both cascades and the identity are summed, then ReLU'd.
    """

    features: int
    stride: int = 1
    wiring: str = "2023"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = conv(self.features, 3, self.stride, name="conv1", dtype=self.dtype)(x)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train))
        chunks = jnp.split(out, 4, axis=-1)
        width = self.features // 4

        def step(cascade: int, k: int, v: jax.Array) -> jax.Array:
            v = conv(width, 3, name=f"conv{cascade}_2_{k}", dtype=self.dtype)(v)
            return BatchNorm(dtype=self.dtype, name=f"bn{cascade}_2_{k}")(v, train)

        def cascade(index: int, order: tuple[int, ...]) -> jax.Array:
            out = {order[0]: step(index, order[0], chunks[order[0] - 1])}
            for previous, k in zip(order, order[1:]):
                out[k] = step(index, k, nn.relu(out[previous]) + chunks[k - 1])
            return jnp.concatenate([out[k] for k in (1, 2, 3, 4)], -1)

        if self.wiring not in MULTISCALE_WIRINGS:
            raise ValueError(f"multiscale_wiring must be one of {MULTISCALE_WIRINGS}, not {self.wiring!r}")
        cascades = cascade(1, (1, 2, 3, 4)) + cascade(2, (4, 3, 2, 1) if self.wiring == "2023" else (1, 2, 3, 4))
        return nn.relu(cascades + _identity(x, self.features, self.stride, self.dtype, train))


def _identity(x: jax.Array, features: int, stride: int, dtype: Dtype, train: bool) -> jax.Array:
    """The residual path: `downsample` when the stride or the width changes, else x."""
    if stride != 1 or x.shape[-1] != features:
        return Downsample(features, stride, dtype, name="downsample")(x, train)
    return x


class ResLayer(nn.Module):
    """`_make_layer`: blocks named 0, 1, ...; the first carries the stride. Sows `output`."""

    block: type[nn.Module]
    features: int
    stride: int
    blocks: int = 2
    block_kwargs: dict | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.blocks):
            x = self.block(self.features, self.stride if i == 0 else 1, dtype=self.dtype, name=str(i),
                           **(self.block_kwargs or {}))(x, train)
        self.sow("intermediates", "output", x)
        return x
