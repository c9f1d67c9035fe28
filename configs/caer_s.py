"""CAER-S, 7 classes: 400 epochs, batch 128, lr 0.1 halved every 50 epochs, no pre-training.

From the released training log (best 88.42% at epoch 399); the log's start at chance accuracy
suggests random initialisation.
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "caer_s"
    config.init_from = ""
    config.num_epochs = 400
    config.batch_size = 128
    config.learning_rate = 0.1
    config.lr_step_epochs = 50
    config.lr_gamma = 0.5
    return config
