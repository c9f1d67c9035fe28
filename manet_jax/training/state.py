"""The train state: parameters, BatchNorm statistics, optimizer state and step."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from manet_jax.mesh import replicate, replicated
from manet_jax.models import INIT_SIZE, MANet

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
