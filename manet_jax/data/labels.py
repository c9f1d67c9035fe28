"""MA-Net's canonical class order and the helper that turns a dataset's label table into indices."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

# MA-Net / AffectNet order; 7-class datasets use the first seven.
CANONICAL_CLASSES: tuple[str, ...] = (
    "Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt")

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
