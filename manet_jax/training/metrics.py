"""Classification metrics: confusion matrices on device, accuracy and per-class recall on the host.

A confusion matrix `cm[true, predicted]` counts examples. From it: overall accuracy (correct /
total, what papers headline), per-class recall (the diagonal over row sums) and mean class
accuracy (the mean recall over classes that occur; balanced accuracy, UAR).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
    """(num_classes, num_classes) int32 counts of (true, predicted) pairs; rows with weight 0 skipped."""
    true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    if weights is not None:
        true = true * weights.astype(jnp.int32)[:, None]
    return true.T @ jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)


def classification_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, mean class accuracy, per-class recall (None for absent classes) and the matrix."""
    confusion = np.asarray(confusion, np.int64)
    support = confusion.sum(1)
    total = int(support.sum())
    present = support > 0
    recall = np.divide(np.diag(confusion), support, out=np.zeros(len(support)), where=present)
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "recall": {name: float(r) if p else None for name, r, p in zip(class_names, recall, present)},
        "count": total,
        "confusion_matrix": confusion.tolist(),
    }


def mean_train_metrics(steps: Sequence[dict[str, float]], batch_size: int) -> dict[str, float]:
    """Means of per-step train metrics (`loss`, `loss_local`, `loss_global`; `correct` -> accuracy)."""
    mean = {key: float(np.mean([s[key] for s in steps])) for key in ("loss", "loss_local", "loss_global")}
    return {**mean, "accuracy": float(sum(s["correct"] for s in steps) / (len(steps) * batch_size))}
