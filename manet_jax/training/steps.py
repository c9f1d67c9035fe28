"""The jitted train and eval steps, data parallel over a 'data' mesh.

Both are pure functions of their inputs. Batches are global arrays sharded along 'data' (see
`sharding.global_batch`); the state and variables are replicated. A benchmark can build them
alone: `make_train_step(MANet(7), sgd(0.01), make_mesh())(state, batch)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from manet_jax.models import BETA, MANet, fused_logits, manet_loss
from manet_jax.training.metrics import HEADS, confusion_matrix
from manet_jax.training.sharding import batch_sharded, replicated
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
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params: Any) -> tuple[jax.Array, tuple]:
            (local, global_), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                mutable=["batch_stats"], rngs={"dropout": rng})
            loss, parts = manet_loss(local, global_, batch["label"], beta)
            return loss, (parts, updates["batch_stats"], fused_logits(local, global_, beta))

        (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
        correct = jnp.sum(logits.argmax(-1) == batch["label"])
        return state, {"loss": loss, **parts, "correct": correct}

    return jax.jit(train_step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_eval_step(model: MANet, mesh: Mesh, beta: float = BETA) -> Callable[[dict, Batch], Metrics]:
    """`eval_step(variables, batch) -> sums` on {'image', 'label', 'mask'} (mask 0: padding).

    Returns the masked sums of one batch: `loss` (beta-weighted CE summed over examples),
    `count`, and a confusion matrix per head in `confusion` ('fused', 'local', 'global').
    """
    def eval_step(variables: dict, batch: Batch) -> Metrics:
        local, global_ = model.apply(variables, batch["image"], train=False)
        mask = batch["mask"]
        loss, _ = manet_loss(local, global_, batch["label"], beta, weights=mask)
        count = mask.sum()
        logits = dict(zip(HEADS, (fused_logits(local, global_, beta), local, global_)))
        confusion = {head: confusion_matrix(batch["label"], logits[head].argmax(-1), model.num_classes, mask)
                     for head in HEADS}
        return {"loss": loss * count, "count": count, "confusion": confusion}

    return jax.jit(eval_step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=replicated(mesh))
