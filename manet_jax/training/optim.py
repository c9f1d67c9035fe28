"""The reference optimizer: SGD with momentum, PyTorch-coupled weight decay, StepLR per epoch."""

from __future__ import annotations

import optax


def step_lr(base_lr: float, steps_per_epoch: int, step_size: int, gamma: float) -> optax.Schedule:
    """torch.optim.lr_scheduler.StepLR stepped once per epoch, as a function of the train step."""
    return optax.exponential_decay(base_lr, transition_steps=step_size * steps_per_epoch,
                                   decay_rate=gamma, staircase=True)


def sgd(learning_rate: float | optax.Schedule, momentum: float = 0.9,
        weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """torch.optim.SGD(momentum, weight_decay): grad += wd * param on every parameter, then momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))
