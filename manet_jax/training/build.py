"""A run set up from its config, once for all its users: the trainer, the evaluator, the TPU plan
and the tests call `build(config)`; the initial variables of training come from scratch or from
pre-trained weights (`config.init_from`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from etils import epath
from jax.sharding import Mesh

from manet_jax import storage
from manet_jax.bundle import CHECKPOINTS, HEADER, HEADER_FILE, VARIABLES, ModelSpec, is_model_directory, load_bundle
from manet_jax.convert import flax_to_torch, import_resnet18, import_state_dict, is_resnet18, load_state_dict_file
from manet_jax.convert.files import CheckpointFileError, check_state_dict_file
from manet_jax.convert.wiring import CHECK_IMAGES, fit_wirings, synthetic_faces
from manet_jax.data import pipeline
from manet_jax.errors import ConfigError
from manet_jax.forward import module_for
from manet_jax.mesh import check_batch_size, make_mesh, prefetch_to_device
from manet_jax.models import MANet, init_variables
from manet_jax.training.config import check_config, eval_sets, model_spec
from manet_jax.training.evaluation import EvalSet, Evaluator, GlobalBatches, find_eval_sets
from manet_jax.training.steps import (TrainState, abstract_train_state, create_train_state, make_train_step, sgd,
                                      step_lr, warmup_cosine)


logger = logging.getLogger(__name__)


def initial_variables(init_from: str, spec: ModelSpec, rng: jax.Array, other_wiring: bool = False
                      ) -> dict[str, Any]:
    """Variables for a model of `spec`.

    `init_from` is '' (the reference's random initialisation from `rng`), a weight file (.pth,
    .pth.tar, .safetensors, .npz) holding an MA-Net (e.g. the MS-Celeb one) or an ImageNet
    ResNet-18 (torchvision names), or a model directory: a bundle, a trainer checkpoint or a
    trainer workdir (local or a URL such as gs://). Heads of another class count are
    re-initialised from `rng`; the import is summarised in the log.

    A model whose header names the other multi-scale wiring than `spec`'s is refused unless
    `other_wiring` (then loaded with a warning). A weight file's MA-Net has no header: its
    BatchNorm statistics are checked (`convert.wiring`) on synthetic faces at `spec.image_size`,
    with a warning when they fit the other wiring better.
    """
    if not init_from:
        logger.info("random initialisation (seed of config.seed)")
        return init_variables(spec.module(), rng)
    path = epath.Path(init_from).expanduser()
    if path.is_dir():
        bundle = load_bundle(path)
        theirs, ours = bundle.spec.multiscale_wiring, spec.multiscale_wiring
        if theirs != ours:
            problem = f"config.init_from: {path} holds a model of the {theirs} multi-scale wiring, this run's is {ours}"
            fix = f"--config.multiscale_wiring={theirs} fine-tunes it as it was trained"
            if not other_wiring:
                raise ConfigError(f"{problem}. {fix}; --config.init_from_other_wiring=True runs its weights in the "
                                  f"{ours} wiring (cascade B's weights then sit at other positions)")
            logger.warning("%s; loading it anyway (init_from_other_wiring): cascade B's weights sit at other "
                           "positions. %s", problem, fix)
        if bundle.spec.num_classes == spec.num_classes:
            logger.info("initialised from %s: all variables", path)
            return bundle.variables
        conversion = import_state_dict(flax_to_torch(bundle.variables), spec.num_classes, rng)
    elif path.is_file():
        state_dict = load_state_dict_file(path)
        if is_resnet18(state_dict):
            conversion = import_resnet18(state_dict, spec.num_classes, rng)
        else:
            conversion = import_state_dict(state_dict, spec.num_classes, rng)
            check_wiring(conversion.variables, spec, str(path))
    else:
        raise _missing(path)
    logger.info("initialised from %s:\n%s", path, conversion.summary())
    return conversion.variables


def check_init_from(init_from: str) -> None:
    """A quick look at `init_from` (as `initial_variables` takes it) before a run writes anything:
    raises ConfigError naming it when it does not exist, is a directory that is not a model, or is
    a weight file that cannot be read as its type (`convert.files.check_state_dict_file`). A
    `gs://` URL must name a model directory in a bucket that can be reached."""
    if not init_from:
        return
    if storage.is_url(init_from):
        storage.check_bucket(init_from, "config.init_from")
    path = epath.Path(init_from).expanduser()
    if storage.is_url(path) and not path.is_dir():
        raise ConfigError(f"config.init_from: {path} is not a model directory (a bundle, a trainer checkpoint or "
                          "a workdir); a weight file is read from a local disk: copy it there, or convert it once "
                          "into a bundle (python -m manet_jax.convert to-flax) and upload that")
    if path.is_dir():
        if not is_model_directory(path):
            raise ConfigError(f"config.init_from: {path} is a directory but not a manet-jax model (a bundle with "
                              f"{VARIABLES}/ and {HEADER}/{HEADER_FILE}, a trainer checkpoint, or a trainer workdir "
                              f"with {CHECKPOINTS}/)")
    elif path.is_file():
        try:
            check_state_dict_file(path)
        except CheckpointFileError as e:
            raise ConfigError(f"config.init_from: {e}") from e
    else:
        raise _missing(path)


def _missing(path: epath.Path) -> ConfigError:
    return ConfigError(
        f"config.init_from: {path} does not exist. Give a weight file (.pth, .pth.tar, .safetensors, "
        "or .npz; e.g. the MS-Celeb MA-Net Pretrained_on_MSCeleb.pth.tar), a converted model or a "
        "trainer workdir, or --config.init_from='' to train from scratch.")


def check_wiring(variables: dict[str, Any], spec: ModelSpec, path: str) -> None:
    """Logs which multi-scale wiring MA-Net `variables` fit (see `convert.wiring`), as a warning
    when it is not `spec`'s."""
    fit = fit_wirings(variables, synthetic_faces(CHECK_IMAGES, spec.image_size))
    if fit.best() == spec.multiscale_wiring:
        logger.info("%s: %s", path, fit.verdict())
        return
    logger.warning("%s: %s; this run uses the %s wiring. Set --config.multiscale_wiring=%s to fine-tune them as "
                   "they were trained (details: python -m manet_jax.convert inspect %s)", path, fit.verdict(),
                   spec.multiscale_wiring, fit.best(), path)


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
