"""AffectNet, 7 classes (codes 0-6), tested on the balanced validation set; from MS-Celeb.

The author's settings (MA-Net issues #2, #3): 20 epochs, batch 256, lr 0.01 decayed x0.1 every 5
epochs, class-balanced sampling (ImbalancedDatasetSampler); best accuracy 64.53% (epoch 7).
"""

from manet_jax.training.config import base_config


def get_config():
    config = base_config()
    config.dataset = "affectnet/7"
    config.init_from = "weights/Pretrained_on_MSCeleb.pth.tar"
    config.input.balanced_sampling = True
    config.num_epochs = 20
    config.batch_size = 256
    config.learning_rate = 0.01
    config.lr_step_epochs = 5
    config.lr_gamma = 0.1
    config.log_every_steps = 100
    return config
