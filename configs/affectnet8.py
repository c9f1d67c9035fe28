"""AffectNet, 8 classes (codes 0-7, with Contempt): the AffectNet-7 recipe; best 60.29% (epoch 9)."""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("affectnet7.py"))
    config.dataset = "affectnet/8"
    return config
