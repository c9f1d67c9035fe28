"""Layers with the official PyTorch model's semantics: BatchNorm, convolutions, linear layers."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = sqrt(2 / (out * kh * kw)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default weight init: uniform in +-1/sqrt(fan_in).
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def accum_dtype(dtype: Dtype) -> Dtype:
    """The dtype for statistics, pooling and logits: float32, or float64 for a float64 model."""
    return jnp.promote_types(dtype, jnp.float32)


def linear_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Linear's default bias init: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d over the last (channel) axis, with PyTorch's semantics.

    `momentum` is PyTorch's: running = (1 - momentum) * running + momentum * batch_stat, and the
    running variance takes the unbiased batch variance while training normalises with the biased
    one. Statistics are computed in float32 (float64 for a float64 model) whatever the compute dtype; under `jax.jit` with a
    batch-sharded input they are statistics of the global batch. `num_batches_tracked` is kept
    so that PyTorch state_dicts round-trip exactly.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        num_batches = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)
        xs = x.astype(accum_dtype(self.dtype))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = xs.mean(axes)
            var = jnp.square(xs - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // features
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = ((1 - self.momentum) * running_var.value
                                     + self.momentum * var * (n / max(n - 1, 1)))
                num_batches.value = num_batches.value + 1
        else:
            mean, var = running_mean.value, running_var.value
        y = (xs - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


class Conv(nn.Module):
    """torch.nn.Conv2d(kernel_size, stride, padding=kernel_size // 2, bias=False) in NHWC.

    The parameter is `kernel`, (k, k, in, out), as flax's `nn.Conv`. A map smaller than the kernel
    (the 2x2 maps small inputs leave in the last layers) is convolved as one matrix product over
    the taps that touch it: XLA otherwise swaps such a convolution's operands, which XLA:CPU runs
    on a slow generic path (0.6 s for one 3x3 conv of 32 2x2x512 maps). A strided 1x1 convolution
    subsamples first, which keeps its input gradient off that path too.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, pad = self.kernel_size, self.kernel_size // 2
        kernel = self.param("kernel", conv_kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        stride = self.stride
        if k == 1:  # subsample first: the gradient is then a padding, not a dilated convolution
            x, stride = strided_window(x, 0, 0, stride), 1
        if min(x.shape[1:3]) >= k:
            return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return conv_by_matmul(x, kernel, stride)


def conv_by_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The zero-padded (k // 2) convolution of NHWC `x` with HWIO `kernel` as one matrix product.

    Taps that only ever see padding are left out; the others' shifted views of `x` are
    concatenated along the channels and multiplied with the matching kernel rows.
    """
    k = kernel.shape[0]
    pad = k // 2
    _, height, width, _ = x.shape
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1

    def touches(offset: int, size: int, out: int) -> bool:
        return any(pad <= offset + stride * r < pad + size for r in range(out))

    taps = [(i, j) for i in range(k) if touches(i, height, out_h) for j in range(k) if touches(j, width, out_w)]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = [strided_window(padded, i, j, stride, (out_h, out_w)) for i, j in taps]
    return jnp.concatenate(views, -1) @ jnp.concatenate([kernel[i, j] for i, j in taps], 0)


def strided_window(x: jax.Array, top: int, left: int, stride: int, size: tuple[int, int] | None = None) -> jax.Array:
    """x[:, top::stride, left::stride] (NHWC), `size` (default: as many as fit) rows and columns.

    Static slices, not a gather, so exports with a symbolic batch size convert to TFLite.
    """
    out_h, out_w = size or ((x.shape[1] - top - 1) // stride + 1, (x.shape[2] - left - 1) // stride + 1)
    x = jax.lax.slice_in_dim(x, top, top + stride * (out_h - 1) + 1, stride, axis=1)
    return jax.lax.slice_in_dim(x, left, left + stride * (out_w - 1) + 1, stride, axis=2)


def conv(features: int, kernel: int, stride: int = 1, *, name: str, dtype: Dtype) -> Conv:
    """torch.nn.Conv2d(kernel, stride, padding=kernel // 2, bias=False) in NHWC."""
    return Conv(features, kernel, stride, dtype=dtype, name=name)


def linear(features: int, fan_in: int, *, name: str, dtype: Dtype) -> nn.Dense:
    """torch.nn.Linear(fan_in, features) with PyTorch's default init."""
    return nn.Dense(features, kernel_init=linear_kernel_init, bias_init=linear_bias_init(fan_in),
                    dtype=dtype, param_dtype=jnp.float32, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1) (padding never wins the max)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
