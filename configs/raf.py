"""RAF-DB, 7 classes: the paper's recipe (MA-Net `main.py` defaults), fine-tuned from MS-Celeb.

100 epochs, batch 128, lr 0.01 decayed x0.1 every 15 epochs; best test accuracy 88.40% (epoch 30).
Needs `weights/Pretrained_on_MSCeleb.pth.tar`, the official MS-Celeb MA-Net (docs/training.md, "The paper's
experiments").
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "raf_db"
    config.init_from = "weights/Pretrained_on_MSCeleb.pth.tar"
    config.num_epochs = 100
    config.batch_size = 128
    config.learning_rate = 0.01
    config.lr_step_epochs = 15
    config.lr_gamma = 0.1
    return config
