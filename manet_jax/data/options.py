"""The input pipeline's options (`config.input`), with the reference's values as defaults.

Kept free of TensorFlow, so that configs load before TensorFlow does.
"""

from __future__ import annotations

import ml_collections

RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's area range
RRC_RATIO = (3 / 4, 4 / 3)  # and aspect range
ERASING_SCALE = (0.02, 0.33)  # torchvision RandomErasing's area range
ERASING_RATIO = (0.3, 3.3)  # and aspect range


def input_config() -> ml_collections.ConfigDict:
    """How training examples are drawn and augmented; evaluation only resizes."""
    c = ml_collections.ConfigDict()
    c.balanced_sampling = False  # draw each class equally often (AffectNet's ImbalancedDatasetSampler)
    c.crop_scale = RRC_SCALE  # RandomResizedCrop area range
    c.crop_ratio = RRC_RATIO  # RandomResizedCrop aspect range
    c.flip_prob = 0.5  # RandomHorizontalFlip
    c.random_erasing = 0.0  # RandomErasing probability (value 0, after the other transforms); MA-Net: none
    c.erasing_scale = ERASING_SCALE  # RandomErasing area range
    return c
