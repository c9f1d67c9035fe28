"""FERPlus, 8 classes (majority vote), tested on FER2013's PrivateTest; from MS-Celeb.

MA-Net reports no FERPlus result; this is the RAF-DB recipe cut to 40 epochs (FERPlus has about
2.3x RAF-DB's training images). It also serves as the FER2013 stage before `configs/sfew.py`.
"""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("raf.py"))
    config.dataset = "ferplus"
    config.num_epochs = 40
    return config
