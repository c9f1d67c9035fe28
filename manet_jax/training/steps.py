"""What a training step computes: the train state, the reference optimizer, the classification
metrics and the jitted train and eval steps, data parallel over a 'data' mesh.

The train state holds parameters, BatchNorm statistics, optimizer state and step. The optimizer is
SGD with momentum, PyTorch-coupled weight decay and StepLR per epoch, as the official code trains,
or a linear warm-up into a cosine decay for short runs from scratch (the demo).

Metrics come from confusion matrices `cm[true, predicted]`, summed on device: overall accuracy
(correct / total, what papers headline), per-class recall (the diagonal over row sums) and mean
class accuracy (the mean recall over classes that occur; balanced accuracy, UAR).

Both steps are pure functions of their inputs around the one forward pass (`manet_jax.forward`).
Batches are global arrays sharded along 'data' (see `mesh.global_batch`); the state and variables
are replicated. `build.build(config)` makes them for a config.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from manet_jax.forward import HEADS, forward
from manet_jax.mesh import INDEX, MASK, data_parallel, replicate, replicated
from manet_jax.models import BETA, INIT_SIZE, MANet, manet_loss


Variables = dict[str, Any]


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes; checkpointed as a whole."""

    step: jax.Array  # int32: optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: optax.OptState

    @property
    def variables(self) -> Variables:
        """`{'params', 'batch_stats'}`: the model's variables."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    @property
    def run_state(self) -> dict[str, Any]:
        """What the state holds besides the model's variables."""
        return {"step": self.step, "opt_state": self.opt_state}


def create_train_state(variables: Variables, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """The state at step 0 from host `variables` (identical on every process), replicated on `mesh`."""
    host = (variables["params"], variables["batch_stats"])
    create = jax.jit(functools.partial(_initial_state, optimizer=optimizer), out_shardings=replicated(mesh))
    return create(*replicate(host, mesh))


def abstract_train_state(model: MANet, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the state: the target for restoring a checkpoint
    and the argument for compiling ahead of time."""
    def init() -> TrainState:
        variables = model.init(jax.random.key(0), jnp.zeros((1, INIT_SIZE, INIT_SIZE, 3)))
        return _initial_state(variables["params"], variables["batch_stats"], optimizer)

    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(init))


def _initial_state(params: Any, batch_stats: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params))


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


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
    """(num_classes, num_classes) int32 counts of (true, predicted) pairs; rows with weight 0 skipped."""
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    if weights is not None:
        true = true * weights.astype(jnp.int32)[:, None]
    return true.T @ jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)


def classification_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, mean class accuracy, per-class recall (None for absent classes) and the matrix."""
    confusion = np.asarray(confusion, np.int64)
    support = confusion.sum(1)
    total = int(support.sum())
    present = support > 0
    recall = np.divide(np.diag(confusion), support, out=np.zeros(len(support)), where=present)
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "recall": {name: float(r) if p else None for name, r, p in zip(class_names, recall, present)},
        "count": total,
        "confusion_matrix": confusion.tolist(),
    }


def mean_train_metrics(steps: Sequence[dict[str, float]], batch_size: int) -> dict[str, float]:
    """Means of per-step train metrics (`loss`, `loss_local`, `loss_global`; `correct` -> accuracy)."""
    mean = {key: float(np.mean([s[key] for s in steps])) for key in ("loss", "loss_local", "loss_global")}
    return {**mean, "accuracy": float(sum(s["correct"] for s in steps) / (len(steps) * batch_size))}


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
