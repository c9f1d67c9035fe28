"""Demo: the real MA-Net trained from scratch on generated faces at 32x32, on CPU.

  python -m manet_jax.train --config=configs/demo.py --workdir=runs/demo

`synthetic_faces/32_8400_700` (8,400 training and 700 test cartoon faces of seven expressions) is
generated on first use. Six epochs with a linear warm-up and a cosine decay of the learning rate;
the test accuracy is printed after every epoch. Measured on 2 CPU cores: docs/benchmarks/README.md.
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "synthetic_faces/32_8400_700"
    config.image_size = 32  # layer4 maps of 1x1: measured 5x the training speed at 48x48 on 2 CPU cores
    config.input.crop_scale = (0.8, 1.0)  # the faces fill the image: keep most of it
    config.num_epochs = 6
    config.batch_size = 64
    config.eval_batch_size = 100
    config.learning_rate = 0.04
    config.lr_schedule = "cosine"
    config.warmup_epochs = 0.5
    config.log_every_steps = 20
    return config
