"""MA-Net's canonical class order, the helper that turns a dataset's label table into indices, and
the match of a dataset's classes to a model's by name."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from manet_jax.data.errors import ClassMapError

# MA-Net / AffectNet order; 7-class datasets use the first seven.
CANONICAL_CLASSES: tuple[str, ...] = (
    "Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt")

LEFT_OUT = -1  # a dataset class's entry in a label map when its examples are not evaluated

K = TypeVar("K", bound=Hashable)


def class_names(num_classes: int) -> tuple[str, ...]:
    """The canonical class names of a `num_classes`-way dataset (7 or 8)."""
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    return CANONICAL_CLASSES[:num_classes]


def canonical_indices(table: Mapping[K, str]) -> dict[K, int]:
    """Maps each native label of `table` (native label -> canonical class name) to its index."""
    unknown = sorted({name for name in table.values() if name not in CANONICAL_CLASSES})
    if unknown:
        raise ValueError(f"not canonical class names: {unknown}; expected {CANONICAL_CLASSES}")
    return {native: CANONICAL_CLASSES.index(name) for native, name in table.items()}


def match_classes(model_classes: Sequence[str], dataset_classes: Sequence[str], dataset: str,
                  class_map: Mapping[str, str | None] | None = None, leave_out: bool = False) -> tuple[int, ...]:
    """The label map of dataset `dataset` for a model: per class of the dataset, in its order, the
    index of the model class its examples count as, or LEFT_OUT.

    A class counts as the model class of the same name, unless `class_map` maps its name to another
    model class's name, or to None (left out). A class with neither is left out if `leave_out`, else
    a ClassMapError names it. Entries of `class_map` for classes the dataset lacks are ignored (a
    map may serve several datasets); an entry naming a class the model lacks is an error.
    """
    class_map = class_map or {}
    unknown = [f"{name}={target}" for name, target in class_map.items()
               if target is not None and target not in model_classes]
    if unknown:
        raise ClassMapError(f"class map entries {', '.join(unknown)} name no class of the model "
                            f"({', '.join(model_classes)})")
    label_map, unmatched = [], []
    for name in dataset_classes:
        target = class_map.get(name, name)
        if target in model_classes:
            label_map.append(list(model_classes).index(target))
            continue
        if target is not None and not leave_out:
            unmatched.append(name)
        label_map.append(LEFT_OUT)
    if unmatched:
        raise ClassMapError(
            f"{dataset}: class {', '.join(unmatched)} has no counterpart among the model's classes "
            f"({', '.join(model_classes)}); say which it counts as with --class-map {unmatched[0]}=<model class>, "
            f"or leave it out with --class-map {unmatched[0]}=")
    return tuple(label_map)
