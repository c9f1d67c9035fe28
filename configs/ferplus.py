"""FERPlus, 8 classes (majority vote), tested on FER2013's PrivateTest; from MS-Celeb.

MA-Net reports no FERPlus result; this is the `fer2013.py` recipe (RAF-DB's, cut to 40 epochs) on
the FERPlus labels of the same images. `configs/sfew.py` can start from it instead of FER2013.
"""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("fer2013.py"))
    config.dataset = "ferplus"
    return config
