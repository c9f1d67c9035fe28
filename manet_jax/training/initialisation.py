"""Initial variables for training: from scratch, or from pre-trained weights (`config.init_from`)."""

from __future__ import annotations

import logging
from typing import Any

import jax
from etils import epath

from manet_jax.bundle import ModelSpec, load_bundle
from manet_jax.convert import flax_to_torch, import_resnet18, import_state_dict, is_resnet18, load_state_dict_file
from manet_jax.errors import ConfigError
from manet_jax.models import init_variables

logger = logging.getLogger(__name__)


def initial_variables(init_from: str, spec: ModelSpec, rng: jax.Array) -> dict[str, Any]:
    """Variables for a model of `spec`.

    `init_from` is '' (the reference's random initialisation from `rng`), a weight file (.pth,
    .pth.tar, .safetensors, .npz) holding an MA-Net (e.g. the MS-Celeb one) or an ImageNet
    ResNet-18 (torchvision names), or a model directory: a bundle, a trainer checkpoint or a
    trainer workdir (local or a URL such as gs://). Heads of another class count are
    re-initialised from `rng`; the import is summarised in the log.
    """
    if not init_from:
        logger.info("random initialisation (seed of config.seed)")
        return init_variables(spec.module(), rng)
    path = epath.Path(init_from).expanduser()
    if path.is_dir():
        bundle = load_bundle(path)
        if bundle.spec.num_classes == spec.num_classes:
            logger.info("initialised from %s: all variables", path)
            return bundle.variables
        conversion = import_state_dict(flax_to_torch(bundle.variables), spec.num_classes, rng)
    elif path.is_file():
        state_dict = load_state_dict_file(path)
        importer = import_resnet18 if is_resnet18(state_dict) else import_state_dict
        conversion = importer(state_dict, spec.num_classes, rng)
    else:
        raise ConfigError(
            f"config.init_from: {path} does not exist. Give a weight file (.pth, .pth.tar, .safetensors, "
            "or .npz; e.g. the MS-Celeb MA-Net Pretrained_on_MSCeleb.pth.tar), a converted model or a "
            "trainer workdir, or --config.init_from='' to train from scratch.")
    logger.info("initialised from %s:\n%s", path, conversion.summary())
    return conversion.variables
