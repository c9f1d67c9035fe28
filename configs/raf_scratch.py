"""RAF-DB without pre-training: the author's suggestion in MA-Net issue #10.

300 epochs, batch 128, lr 0.01 decayed x0.1 every 70 epochs, random initialisation.
"""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("raf.py"))
    config.init_from = ""
    config.num_epochs = 300
    config.lr_step_epochs = 70
    return config
