"""synthetic_faces: generated cartoon faces of the first 7 expressions (no download needed).

Config names are `<size>`, one of DEFAULT_SIZES (4,200 train and 700 test images, 600 / 100
per class), or `<size>_<num_train>_<num_test>` for any size from 16; images are `size` x `size`
JPEGs drawn by `face_renderer`, deterministic in (config, split, index).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from manet_jax.data.builder_base import FerBuilder, SourceExample
from manet_jax.data.errors import DatasetNameError
from manet_jax.data.face_renderer import CLASSES, render_face
from manet_jax.data.image_files import encode_image

DEFAULT_SIZES = (32, 48, 64, 96, 112, 224)
DEFAULT_COUNTS = {"train": 4200, "test": 700}
JPEG_QUALITY = 95
_SPLIT_SEEDS = {"train": 1, "test": 2}


@dataclasses.dataclass
class SyntheticFacesConfig(tfds.core.BuilderConfig):
    size: int = 64
    num_train: int = DEFAULT_COUNTS["train"]
    num_test: int = DEFAULT_COUNTS["test"]

    @classmethod
    def from_name(cls, name: str) -> SyntheticFacesConfig:
        """The config called `<size>` or `<size>_<num_train>_<num_test>`."""
        match = re.fullmatch(r"(\d+)(?:_(\d+)_(\d+))?", name)
        if not match:
            raise DatasetNameError(f"synthetic_faces config must be '<size>' or "
                                   f"'<size>_<num_train>_<num_test>', got {name!r}")
        size, num_train, num_test = match.groups()
        if not num_train and int(size) not in DEFAULT_SIZES:
            raise DatasetNameError(
                f"synthetic_faces/{name}: the sizes are {', '.join(map(str, DEFAULT_SIZES))}; another size needs "
                f"the split sizes too, e.g. synthetic_faces/{size}_{DEFAULT_COUNTS['train']}_{DEFAULT_COUNTS['test']}")
        counts = (int(num_train), int(num_test)) if num_train else tuple(DEFAULT_COUNTS.values())
        if int(size) < 16 or min(counts) < len(CLASSES):
            raise DatasetNameError(f"synthetic_faces/{name}: size must be >= 16 and each split needs at "
                                   f"least {len(CLASSES)} images")
        return cls(name=name, size=int(size), num_train=counts[0], num_test=counts[1],
                   description=f"{size}x{size} px, {counts[0]} train / {counts[1]} test images.")


def render_jpeg(label: int, size: int, seed: tuple[int, ...]) -> bytes:
    """The synthetic face for `label` drawn from `seed`, as JPEG."""
    return encode_image(render_face(label, size, np.random.default_rng(seed)), "JPEG", JPEG_QUALITY)


class SyntheticFaces(FerBuilder):
    """Cartoon faces whose expression shows in eye openness, brow and mouth shape and skin
    folds, under random identity, pose, scale, colours, clutter, lighting and noise. Classes are
    balanced."""

    BUILDER_CONFIGS: ClassVar[list[SyntheticFacesConfig]] = [
        SyntheticFacesConfig.from_name(str(size)) for size in DEFAULT_SIZES]

    def _source_examples(self, manual_dir: Path | None) -> dict[str, list[SourceExample]]:
        config = self.builder_config
        counts = {"train": config.num_train, "test": config.num_test}
        return {split: [SourceExample(f"{split}/{i:06d}.jpg", i % len(CLASSES),
                                      lambda i=i, seed=_SPLIT_SEEDS[split]: render_jpeg(
                                          i % len(CLASSES), config.size, (seed, i)))
                        for i in range(n)]
                for split, n in counts.items()}
