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
from manet_jax.mesh import INDEX, MASK, data_parallel
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


def make_eval_step(model: MANet, mesh: Mesh, beta: float = BETA, examples: bool = False
                   ) -> Callable[[dict, Batch, jax.Array], Metrics]:
    """`eval_step(variables, batch, classes) -> outputs` on {'image', 'label', 'index', 'mask'}
    (mask 0: padding; labels are model classes), with `classes` a (num_classes,) bool array: the
    model classes the prediction is restricted to (those the eval set's classes count as).

    `outputs['sums']` are the masked sums of the batch: `loss` (beta-weighted CE over all classes,
    summed over examples), `count`, a confusion matrix per head of `forward.HEADS` of the
    restricted prediction (`confusion`) and the hits of the unrestricted one per head
    (`unrestricted_correct`). With `examples`, `outputs['examples']` holds per row of the batch
    (gathered from every device) its `index`, `label` and `mask`, the fused head's restricted
    `prediction` and its `probabilities` over all classes; else it is empty.
    """
    def eval_step(variables: dict, batch: Batch, classes: jax.Array) -> Metrics:
        logits, _ = forward(model, variables, batch["image"], beta)
        mask = batch[MASK]
        loss, _ = manet_loss(logits["local"], logits["global"], batch["label"], beta, weights=mask)
        count = mask.sum()
        restricted = {head: jnp.where(classes, logits[head], -jnp.inf).argmax(-1) for head in HEADS}
        sums = {"loss": loss * count, "count": count,
                "confusion": {head: confusion_matrix(batch["label"], restricted[head], model.num_classes, mask)
                              for head in HEADS},
                "unrestricted_correct": {head: jnp.sum((logits[head].argmax(-1) == batch["label"]) * mask)
                                         for head in HEADS}}
        outputs = {}
        if examples:
            outputs = {"index": batch[INDEX], "label": batch["label"], "mask": mask,
                       "prediction": restricted["fused"],
                       "probabilities": jax.nn.softmax(logits["fused"].astype(jnp.float32))}
        return {"sums": sums, "examples": outputs}

    return data_parallel(eval_step, mesh, more_args=1)
