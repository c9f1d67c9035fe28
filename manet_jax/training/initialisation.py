"""Initial variables for training: from scratch, or from pre-trained weights (`config.init_from`)."""

from __future__ import annotations

import logging
from typing import Any

import jax
from etils import epath

from manet_jax import storage
from manet_jax.bundle import CHECKPOINTS, HEADER, HEADER_FILE, VARIABLES, ModelSpec, is_model_directory, load_bundle
from manet_jax.convert import flax_to_torch, import_resnet18, import_state_dict, is_resnet18, load_state_dict_file
from manet_jax.convert.files import CheckpointFileError, check_state_dict_file
from manet_jax.convert.wiring import CHECK_IMAGES, fit_wirings, synthetic_faces
from manet_jax.errors import ConfigError
from manet_jax.models import init_variables

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
