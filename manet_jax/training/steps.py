"""The jitted train and eval steps, data parallel over a 'data' mesh.

Both are pure functions of their inputs around the one forward pass (`manet_jax.forward`).
Batches are global arrays sharded along 'data' (see `mesh.global_batch`); the state and variables
are replicated. `build.build(config)` makes them for a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from manet_jax.forward import HEADS, forward
from manet_jax.mesh import MASK, data_parallel
from manet_jax.models import BETA, MANet, manet_loss
from manet_jax.training.metrics import confusion_matrix
from manet_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, Any]


def make_train_step(model: MANet, optimizer: optax.GradientTransformation, mesh: Mesh, beta: float = BETA
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`train_step(state, batch) -> (state, metrics)`: one SGD step on {'image', 'label'}.

    The loss is beta CE(local) + (1 - beta) CE(global) over the global batch; BatchNorm uses the
    global batch's statistics. `metrics` holds scalar `loss`, `loss_local`, `loss_global` and
    `correct` (fused-head hits). The input state is donated.
    """
    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        def loss_fn(params: Any) -> tuple[jax.Array, tuple]:
            logits, updates = forward(model, {"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                      beta, train=True)
            loss, parts = manet_loss(logits["local"], logits["global"], batch["label"], beta)
            return loss, (parts, updates["batch_stats"], logits["fused"])

        (loss, (parts, batch_stats, fused)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
        correct = jnp.sum(fused.argmax(-1) == batch["label"])
        return state, {"loss": loss, **parts, "correct": correct}

    return data_parallel(train_step, mesh, donate=True)


def make_eval_step(model: MANet, mesh: Mesh, beta: float = BETA) -> Callable[[dict, Batch], Metrics]:
    """`eval_step(variables, batch) -> sums` on {'image', 'label', 'mask'} (mask 0: padding).

    Returns the masked sums of one batch: `loss` (beta-weighted CE summed over examples),
    `count`, and a confusion matrix per head of `forward.HEADS` in `confusion`.
    """
    def eval_step(variables: dict, batch: Batch) -> Metrics:
        logits, _ = forward(model, variables, batch["image"], beta)
        mask = batch[MASK]
        loss, _ = manet_loss(logits["local"], logits["global"], batch["label"], beta, weights=mask)
        count = mask.sum()
        confusion = {head: confusion_matrix(batch["label"], logits[head].argmax(-1), model.num_classes, mask)
                     for head in HEADS}
        return {"loss": loss * count, "count": count, "confusion": confusion}

    return data_parallel(eval_step, mesh)
