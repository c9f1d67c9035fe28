"""The reference optimizer: SGD with momentum, PyTorch-coupled weight decay, StepLR per epoch;
and a linear warm-up into a cosine decay for short runs from scratch (the demo)."""

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


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """base_lr * (step + 1) / warmup_steps for the first `warmup_steps` steps, then half a cosine
    from base_lr down to 0 at `total_steps`; in JAX's default float like `step_lr`."""
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: jax.Array) -> jax.Array:
        dtype = jnp.result_type(float)
        step = jnp.asarray(step, dtype)
        warmup = (step + 1) / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0, 1)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * progress))
        return jnp.asarray(base_lr, dtype) * jnp.where(step < warmup_steps, warmup, cosine)

    return schedule


def sgd(learning_rate: float | optax.Schedule, momentum: float = 0.9,
        weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum, weight_decay): grad += wd * param on every parameter, then momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))
