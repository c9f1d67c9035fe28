"""FER2013, 7 classes (the original labels), tested on PrivateTest; from MS-Celeb.

The stage before `configs/sfew.py`: MA-Net's author fine-tuned a FER2013-trained model on SFEW
(MA-Net issue #3). Neither the paper nor the issues give its recipe or result; this is the RAF-DB
recipe cut to 40 epochs (FER2013 has about 2.3x RAF-DB's training images), an assumption.
"""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("raf.py"))
    config.dataset = "fer2013"
    config.num_epochs = 40
    return config
