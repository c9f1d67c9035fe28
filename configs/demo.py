"""Demo: the real MA-Net trained from scratch on generated faces at 64x64, on CPU.

  python -m manet_jax.train --config=configs/demo.py --workdir=runs/demo

`synthetic_faces/64` (4,200 training and 700 test images of seven expressions) is generated on
first use. The test accuracy is printed after every epoch.
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "synthetic_faces/64"
    config.image_size = 64
    config.crop_scale = (0.5, 1.0)  # the faces are small: keep at least half of the image
    config.num_epochs = 5
    config.batch_size = 32
    config.eval_batch_size = 100
    config.learning_rate = 0.02
    config.lr_step_epochs = 4
    config.log_every_steps = 20
    return config
