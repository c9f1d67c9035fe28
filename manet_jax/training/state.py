"""The train state: parameters, BatchNorm statistics, optimizer state, step and rng."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from manet_jax.convert.core import TEMPLATE_SIZE
from manet_jax.models import MANet
from manet_jax.training.sharding import replicate, replicated

Variables = dict[str, Any]


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes; checkpointed as a whole."""

    step: jax.Array  # int32: optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data (checkpointable); folded with the step for stochastic layers

    @property
    def variables(self) -> Variables:
        """`{'params', 'batch_stats'}` for `model.apply`."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(variables: Variables, optimizer: optax.GradientTransformation, rng: jax.Array,
                       mesh: Mesh) -> TrainState:
    """The state at step 0 from host `variables` (identical on every process), replicated on `mesh`."""
    host = (variables["params"], variables["batch_stats"], jax.random.key_data(rng))
    create = jax.jit(functools.partial(_initial_state, optimizer=optimizer), out_shardings=replicated(mesh))
    return create(*replicate(host, mesh))


def abstract_train_state(model: MANet, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the state: the target for restoring a checkpoint."""
    def init() -> TrainState:
        key = jax.random.key(0)
        variables = model.init(key, jnp.zeros((1, TEMPLATE_SIZE, TEMPLATE_SIZE, 3)))
        return _initial_state(variables["params"], variables["batch_stats"], jax.random.key_data(key), optimizer)

    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(init))


def _initial_state(params: Any, batch_stats: Any, rng: jax.Array, optimizer: optax.GradientTransformation
                   ) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), rng=rng)
