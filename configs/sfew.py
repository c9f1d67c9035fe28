"""SFEW 2.0, 7 classes, tested on the validation split; fine-tuned from a FER2013-trained MA-Net.

100 epochs, batch 128, lr 0.001 decayed x0.1 every 10 epochs; best 59.40% (epoch 41). The author
first trained on FER2013 (MA-Net issue #3), with its original 7 classes: here the run of
`configs/fer2013.py` in `workdirs/fer2013`. A variant starts from the FERPlus run instead
(`--config.init_from=workdirs/ferplus`: 8-class majority-vote labels, a different task; its heads
are re-initialised for 7 classes). Results vary a lot between runs on this small set.
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "sfew"
    config.init_from = "workdirs/fer2013"
    config.num_epochs = 100
    config.batch_size = 128
    config.learning_rate = 0.001
    config.lr_step_epochs = 10
    config.lr_gamma = 0.1
    config.log_every_steps = 8
    return config
