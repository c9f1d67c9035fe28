"""RAF-DB without pre-training: the author's suggestion in MA-Net issue #10.

300 epochs, batch 128, lr decayed x0.1 every 70 epochs, random initialisation; the paper's
from-scratch RAF-DB accuracy is 86.34% (issue #10). The author gave no learning rate: 0.01, the
official `main.py` default that raf.py uses, is an assumption.
"""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("raf.py"))
    config.init_from = ""
    config.num_epochs = 300
    config.lr_step_epochs = 70
    return config
