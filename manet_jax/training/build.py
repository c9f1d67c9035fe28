"""A run set up from its config, once for all its users: the trainer, the evaluator, the TPU plan
and the tests call `build(config)`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

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
from manet_jax.training.config import check_config, eval_sets, model_spec
from manet_jax.training.eval_sets import EvalSet, Evaluator, GlobalBatches, find_eval_sets
from manet_jax.training.initialisation import initial_variables
from manet_jax.training.optim import sgd, step_lr, warmup_cosine
from manet_jax.training.state import TrainState, abstract_train_state, create_train_state
from manet_jax.training.steps import make_train_step


@dataclasses.dataclass(frozen=True)
class Setup:
    """The model, optimizer, schedule, steps, state and data of a run of `config` on `mesh`."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    info: pipeline.DatasetInfo  # the training data: config.dataset, one dataset or a union
    spec: ModelSpec  # the header of the models the run writes
    model: MANet
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    steps_per_epoch: int
    eval_sets: tuple[EvalSet, ...]  # evaluated side by side; the first ranks the checkpoints
    eval_batch_size: int

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.steps_per_epoch

    @functools.cached_property
    def train_step(self) -> Callable:
        return make_train_step(self.model, self.optimizer, self.mesh, self.spec.beta)

    @functools.cached_property
    def evaluator(self) -> Evaluator:
        """How the run evaluates its model on its eval sets."""
        config = self.config
        return Evaluator(self.model, self.spec.beta, self.mesh, config.image_size, self.eval_batch_size,
                         config.data_dir)

    @property
    def eval_step(self) -> Callable:
        """The evaluator's eval step (`steps.make_eval_step`)."""
        return self.evaluator.eval_step

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


def build(config: ml_collections.ConfigDict, mesh: Mesh | None = None,
          dataset_info: Callable[[str, str | None], pipeline.DatasetInfo] = pipeline.dataset_info) -> Setup:
    """The run of `config` on `mesh` (default: every device), with `dataset_info(name, data_dir)`
    describing its datasets (default: the prepared data's). Raises ConfigError (or a dataset error)
    before any JAX work when the config cannot run there."""
    check_config(config)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("config.dtype=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1")
    info = dataset_info(config.dataset, config.data_dir)
    if info.train_split is None:
        raise ConfigError(f"config.dataset: {config.dataset} has no train split; it is for evaluation only "
                          f"(config.eval_dataset={config.dataset})")
    sets = find_eval_sets(eval_sets(config), info.class_names, config.data_dir,
                          f"config.eval_dataset={config.eval_dataset!r}", dataset_info, leave_out=True)
    mesh = make_mesh() if mesh is None else mesh
    eval_batch_size = config.eval_batch_size or config.batch_size
    check_batch_size(config.batch_size, mesh, "config.batch_size")
    check_batch_size(eval_batch_size, mesh, "config.eval_batch_size")
    spec = model_spec(config, info.class_names)
    steps_per_epoch = pipeline.steps_per_epoch(info, config.batch_size)
    if config.lr_schedule == "cosine":
        schedule = warmup_cosine(config.learning_rate, config.num_epochs * steps_per_epoch,
                                 round(config.warmup_epochs * steps_per_epoch))
    else:
        schedule = step_lr(config.learning_rate, steps_per_epoch, config.lr_step_epochs, config.lr_gamma)
    return Setup(config=config, mesh=mesh, info=info, spec=spec, model=module_for(spec, mesh), schedule=schedule,
                 optimizer=sgd(schedule, config.momentum, config.weight_decay), steps_per_epoch=steps_per_epoch,
                 eval_sets=sets, eval_batch_size=eval_batch_size)
