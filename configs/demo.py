"""Demo: the real MA-Net trained from scratch on generated faces at 48x48, on CPU.

  python -m manet_jax.train --config=configs/demo.py --workdir=runs/demo

`synthetic_faces/48` (4,200 training and 700 test images of seven expressions) is generated on
first use. The test accuracy is printed after every epoch; on 2 CPU cores the run takes 9 to 15
minutes and ends at 84-95%, depending on the CPU (README, "Training and evaluation").
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "synthetic_faces/48"
    config.image_size = 48
    config.input.crop_scale = (0.8, 1.0)  # the faces fill the image: keep most of it
    config.num_epochs = 5
    config.batch_size = 64
    config.eval_batch_size = 100
    config.learning_rate = 0.04
    config.lr_step_epochs = 4
    config.log_every_steps = 20
    return config
