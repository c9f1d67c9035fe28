"""FED-RO: trained on AffectNet-7 + RAF-DB train, tested on FED-RO's 400 occluded faces; from MS-Celeb.

The official log (MA-Net `log/FED-RO.txt`): 1,157 batches of 256 per epoch (the 296,172 images of
both train splits once each), 20 epochs, lr 0.01 decayed x0.1 every 5 epochs; best 70.0% (epoch 9).
The AffectNet-7 recipe on the union, then. Class-balanced sampling is inferred, not stated: the
log's train accuracy follows that of the class-balanced AffectNet-7 run epoch by epoch (52.3, 60.1,
65.0, 65.7% after epochs 1, 5, 10, 20, against 52.5, 59.9, 64.8, 65.8%), and the two runs' data
differ only by RAF-DB's 4% of the images. (Its losses are about twice those of the AffectNet-7 log
at the same accuracy, which this recipe does not explain.)
"""

from pathlib import Path

from manet_jax.training.config import load_config_file


def get_config():
    config = load_config_file(Path(__file__).with_name("affectnet7.py"))
    config.dataset = "affectnet/7+raf_db"
    config.eval_dataset = "fed_ro"
    return config
