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


def conv(features: int, kernel: int, stride: int = 1, *, name: str, dtype: Dtype) -> nn.Conv:
    """torch.nn.Conv2d(kernel, stride, padding=kernel // 2, bias=False) in NHWC."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=conv_kernel_init, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


def linear(features: int, fan_in: int, *, name: str, dtype: Dtype) -> nn.Dense:
    """torch.nn.Linear(fan_in, features) with PyTorch's default init."""
    return nn.Dense(features, kernel_init=linear_kernel_init, bias_init=linear_bias_init(fan_in),
                    dtype=dtype, param_dtype=jnp.float32, name=name)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1) (padding never wins the max)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
