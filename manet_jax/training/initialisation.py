"""Initial variables for training: from scratch, or from pre-trained weights (`config.init_from`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax

from manet_jax import checkpoints
from manet_jax.convert import (flax_to_torch, import_resnet18, import_state_dict, init_variables, is_resnet18,
                               load_state_dict_file)
from manet_jax.training.config import ConfigError

logger = logging.getLogger(__name__)


def initial_variables(init_from: str, num_classes: int, rng: jax.Array) -> tuple[dict[str, Any], str]:
    """(variables, description) for a `num_classes`-way MANet.

    `init_from` is '' (the reference's random initialisation), a weight file (.pth, .pth.tar,
    .safetensors, .npz) holding an MA-Net (e.g. the MS-Celeb one) or an ImageNet ResNet-18
    (torchvision names), or a directory: a converted checkpoint or a trainer workdir. Heads of
    another class count are re-initialised; the import is summarised in the log.
    """
    if not init_from:
        return init_variables(num_classes, rng), "random initialisation"
    path = Path(init_from).expanduser()
    if path.is_dir():
        variables, header = checkpoints.load_variables(path)
        if header["num_classes"] == num_classes:
            logger.info("initialised from %s: all variables", path)
            return variables, f"initialised from {path}"
        conversion = import_state_dict(flax_to_torch(variables), num_classes, rng)
    elif path.is_file():
        state_dict = load_state_dict_file(path)
        importer = import_resnet18 if is_resnet18(state_dict) else import_state_dict
        conversion = importer(state_dict, num_classes, rng)
    else:
        raise ConfigError(
            f"config.init_from: {path} does not exist. Give a weight file (.pth, .pth.tar, .safetensors, "
            "or .npz; e.g. the MS-Celeb MA-Net Pretrained_on_MSCeleb.pth.tar), a converted checkpoint or a "
            "trainer workdir, or --config.init_from='' to train from scratch.")
    logger.info("initialised from %s:\n%s", path, conversion.summary())
    return conversion.variables, f"initialised from {path}"
