"""Dataset names (`<builder>` or `<builder>/<config>`) -> TFDS builders; several names joined by
`+` (`affectnet/7+raf_db`) are the union of those datasets."""

from __future__ import annotations

import os

from manet_jax.data.affectnet import Affectnet
from manet_jax.data.builder_base import FerBuilder
from manet_jax.data.caer_s import CaerS
from manet_jax.data.errors import DatasetNameError
from manet_jax.data.fed_ro import FedRo
from manet_jax.data.fer2013 import Fer2013
from manet_jax.data.ferplus import Ferplus
from manet_jax.data.image_folder import ImageFolder
from manet_jax.data.locations import resolve_data_dir
from manet_jax.data.raf_db import RafDb
from manet_jax.data.sfew import Sfew
from manet_jax.data.synthetic_faces import SyntheticFaces, SyntheticFacesConfig

BUILDERS: dict[str, type[FerBuilder]] = {
    cls.name: cls for cls in (RafDb, Affectnet, CaerS, Sfew, Fer2013, Ferplus, FedRo, ImageFolder, SyntheticFaces)}
UNION = "+"
# Split sizes as the datasets publish them, to plan a run without the data (the TPU plan); a
# prepared dataset's own counts (pipeline.dataset_info) are exact. synthetic_faces' follow from
# the name; image_folder's are whatever the folders hold.
PUBLISHED_SPLITS: dict[str, dict[str, int]] = {
    "raf_db": {"train": 12271, "test": 3068},
    "affectnet/7": {"train": 283901, "test": 3500},
    "affectnet/8": {"train": 287651, "test": 4000},
    "caer_s": {"train": 48995, "test": 20987},
    "sfew": {"train": 958, "validation": 436},
    "fer2013": {"train": 28709, "validation": 3589, "test": 3589},
    "ferplus": {"train": 28709, "validation": 3589, "test": 3589},
    "fed_ro": {"test": 400},
}
SPLIT_NOTES = {
    "affectnet/7": "the manually annotated set as published; copies differ by a few images",
    "affectnet/8": "the manually annotated set as published; copies differ by a few images",
    "ferplus": "FER2013's rows, an upper bound: FERPlus's majority vote drops some",
}


def union_members(name: str) -> list[str]:
    """'affectnet/7+raf_db' -> ['affectnet/7', 'raf_db']; 'raf_db' -> ['raf_db']. Each is checked."""
    members = name.split(UNION)
    if len(set(members)) != len(members):
        raise DatasetNameError(f"dataset {name!r} names a dataset twice")
    for member in members:
        split_name(member)
    return members


def split_name(name: str) -> tuple[str, str | None]:
    """'affectnet/7' -> ('affectnet', '7'); 'raf_db' -> ('raf_db', None)."""
    if UNION in name:
        raise DatasetNameError(f"{name!r} names several datasets; give one ({', '.join(name.split(UNION))})")
    builder, _, config = name.partition("/")
    if builder not in BUILDERS:
        raise DatasetNameError(f"unknown dataset {name!r}; known: {', '.join(sorted(BUILDERS))}")
    cls = BUILDERS[builder]
    if cls.BUILDER_CONFIGS and not config and cls is not SyntheticFaces:
        configs = ", ".join(f"{builder}/{c.name}" for c in cls.BUILDER_CONFIGS)
        raise DatasetNameError(f"dataset {name!r} needs a config: {configs}")
    if config and not cls.BUILDER_CONFIGS:
        raise DatasetNameError(f"dataset {builder!r} has no configs, got {name!r}")
    if config and cls is not SyntheticFaces and config not in cls.builder_configs:
        configs = ", ".join(f"{builder}/{c.name}" for c in cls.BUILDER_CONFIGS)
        raise DatasetNameError(f"unknown dataset {name!r}; {builder} has {configs}")
    return builder, config or None


def published_splits(name: str) -> dict[str, int]:
    """Split -> number of examples of dataset `name` as published ({} when that depends on your
    files)."""
    builder, config = split_name(name)
    if builder == SyntheticFaces.name:
        synthetic = SyntheticFacesConfig.from_name(config or "64")
        return {"train": synthetic.num_train, "test": synthetic.num_test}
    return dict(PUBLISHED_SPLITS.get(name, {}))


def make_builder(name: str, data_dir: str | os.PathLike | None = None, **kwargs) -> FerBuilder:
    """The TFDS builder of dataset `name` in `data_dir` (default: `locations.default_data_dir()`);
    `kwargs` go to the builder (e.g. skip_corrupt)."""
    builder, config = split_name(name)
    cls = BUILDERS[builder]
    if cls is SyntheticFaces:  # any '<size>[_<train>_<test>]', by default 64 px
        config = config or "64"
        if config not in cls.builder_configs:
            config = SyntheticFacesConfig.from_name(config)
    return cls(config=config, data_dir=resolve_data_dir(data_dir), **kwargs)
