"""A run set up from its config, once for all its users: the trainer, the evaluator, the TPU plan
and the tests call `build(config)`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from manet_jax.bundle import ModelSpec
from manet_jax.data import pipeline
from manet_jax.errors import ConfigError
from manet_jax.forward import module_for
from manet_jax.mesh import check_batch_size, make_mesh, prefetch_to_device
from manet_jax.models import MANet
from manet_jax.training.config import check_config, model_spec
from manet_jax.training.initialisation import initial_variables
from manet_jax.training.optim import sgd, step_lr
from manet_jax.training.state import TrainState, abstract_train_state, create_train_state
from manet_jax.training.steps import make_eval_step, make_train_step

GlobalBatches = Iterator[dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Setup:
    """The model, optimizer, schedule, steps, state and data of a run of `config` on `mesh`."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    info: pipeline.DatasetInfo
    spec: ModelSpec  # the header of the models the run writes
    model: MANet
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    eval_split: str
    eval_batch_size: int

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch

    @functools.cached_property
    def train_step(self) -> Callable:
        return make_train_step(self.model, self.optimizer, self.mesh, self.spec.beta)

    @functools.cached_property
    def eval_step(self) -> Callable:
        return make_eval_step(self.model, self.mesh, self.spec.beta)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the train state."""
        return abstract_train_state(self.model, self.optimizer, self.mesh)

    def initial_state(self) -> TrainState:
        """The state at step 0: variables from config.init_from (or initialised from config.seed)."""
        variables = initial_variables(self.config.init_from, self.spec, jax.random.key(self.config.seed),
                                      self.config.init_from_other_wiring)
        return create_train_state(variables, self.optimizer, self.mesh)

    def train_batches(self, start_step: int = 0) -> GlobalBatches:
        """The run's training batches from `start_step` to its last step, as global arrays on the mesh."""
        config = self.config
        return prefetch_to_device(pipeline.train_iterator(
            config.dataset, config.data_dir, split=self.info.train_split, image_size=config.image_size,
            global_batch_size=config.batch_size, seed=config.seed, options=config.input, start_step=start_step,
            num_steps=self.total_steps - start_step), self.mesh)

    def eval_batches(self, split: str | None = None) -> GlobalBatches:
        """Every example of `split` (default: the eval split) once, padding masked, on the mesh."""
        config = self.config
        return prefetch_to_device(pipeline.eval_iterator(
            config.dataset, config.data_dir, split=split or self.eval_split, image_size=config.image_size,
            global_batch_size=self.eval_batch_size), self.mesh)


def build(config: ml_collections.ConfigDict, mesh: Mesh | None = None,
          info: pipeline.DatasetInfo | None = None) -> Setup:
    """The run of `config` on `mesh` (default: every device) over `info` (default: the prepared
    dataset's). Raises ConfigError before any JAX work when the config cannot run there."""
    check_config(config)
    mesh = make_mesh() if mesh is None else mesh
    info = pipeline.dataset_info(config.dataset, config.data_dir) if info is None else info
    eval_batch_size = config.eval_batch_size or config.batch_size
    check_batch_size(config.batch_size, mesh, "config.batch_size")
    check_batch_size(eval_batch_size, mesh, "config.eval_batch_size")
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("config.dtype=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1")
    spec = model_spec(config, info.class_names)
    steps_per_epoch = pipeline.steps_per_epoch(info, config.batch_size)
    schedule = step_lr(config.learning_rate, steps_per_epoch, config.lr_step_epochs, config.lr_gamma)
    return Setup(config=config, mesh=mesh, info=info, spec=spec, model=module_for(spec, mesh), schedule=schedule,
                 optimizer=sgd(schedule, config.momentum, config.weight_decay), steps_per_epoch=steps_per_epoch,
                 eval_split=config.eval_split or info.eval_split, eval_batch_size=eval_batch_size)
