"""Demo: the real MA-Net trained from scratch on synthetic faces at 96x96, on CPU in minutes.

  python -m manet_jax.train --config=configs/demo.py --workdir=runs/demo
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "synthetic_faces/96"
    config.image_size = 96
    config.crop_scale = (0.5, 1.0)
    config.num_epochs = 4
    config.batch_size = 32
    config.eval_batch_size = 100
    config.learning_rate = 0.05
    config.lr_step_epochs = 3
    config.log_every_steps = 20
    return config
