"""The reference optimizer: SGD with momentum, PyTorch-coupled weight decay, StepLR per epoch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def step_lr(base_lr: float, steps_per_epoch: int, step_size: int, gamma: float) -> optax.Schedule:
    """torch.optim.lr_scheduler.StepLR stepped once per epoch, as a function of the train step:
    base_lr * gamma ** (epochs done // step_size), in JAX's default float (float64 with
    JAX_ENABLE_X64, like PyTorch's Python-float learning rates; optax's own decay schedules
    compute in float32 whatever the parameters)."""
    steps_per_decay = step_size * steps_per_epoch

    def schedule(step: jax.Array) -> jax.Array:
        dtype = jnp.result_type(float)
        return jnp.asarray(base_lr, dtype) * jnp.asarray(gamma, dtype) ** (step // steps_per_decay)

    return schedule


def sgd(learning_rate: float | optax.Schedule, momentum: float = 0.9,
        weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum, weight_decay): grad += wd * param on every parameter, then momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))
