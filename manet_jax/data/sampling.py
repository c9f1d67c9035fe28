"""Which examples a step shows: seeded epochs, class-balanced sampling, process and eval sharding.

The training stream is a sequence of epochs, each an order of the n training examples: a seeded
permutation, or with `balanced` n draws with replacement weighted 1/count(class) (the
ImbalancedDatasetSampler that MA-Net's author used on AffectNet). Global sample g is position
g % n of epoch g // n, and step s holds samples [s * B, (s + 1) * B), so batches run across epoch
boundaries. Each sample's augmentation is keyed by (seed, epoch, position). All of it is a pure
function of (labels, seed, g): any step can be recomputed without
the ones before it, and the global batch does not depend on the number of processes.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """ceil(n / B): the reference keeps the last partial batch (no drop_last)."""
    return math.ceil(num_examples / global_batch_size)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"the process count {process_count}")
    return global_batch_size // process_count


def local_rows(step: int, global_batch_size: int, process_index: int, process_count: int
               ) -> np.ndarray:
    """Global sample numbers of process `process_index`'s share of `step`: its contiguous rows
    [p * B / P, (p + 1) * B / P) of the global batch."""
    local = local_batch_size(global_batch_size, process_count)
    return step * global_batch_size + process_index * local + np.arange(local, dtype=np.int64)


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-example sampling probabilities proportional to 1 / count(example's class)."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return weights / weights.sum()


class TrainOrder:
    """Maps global sample numbers to (example index, epoch, position in epoch)."""

    def __init__(self, labels: np.ndarray, seed: int, balanced: bool = False,
                 cached_epochs: int = 4):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_examples = len(labels)
        if not self.num_examples:
            raise ValueError("cannot sample from an empty split")
        self.seed = seed
        self.weights = class_balanced_weights(np.asarray(labels)) if balanced else None
        self._epochs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_epochs = cached_epochs

    def epoch(self, epoch: int) -> np.ndarray:
        """The example indices of `epoch`, in order."""
        if epoch not in self._epochs:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            n = self.num_examples
            self._epochs[epoch] = (rng.permutation(n) if self.weights is None
                                   else rng.choice(n, size=n, replace=True, p=self.weights))
            while len(self._epochs) > self._cached_epochs:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def lookup(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(example index, epoch, position) of each global sample number."""
        epochs, positions = np.divmod(np.asarray(samples, np.int64), self.num_examples)
        indices = np.empty_like(positions)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            indices[sel] = self.epoch(int(epoch))[positions[sel]]
        return indices, epochs, positions


def augmentation_keys(seed: int, epochs: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Stateless-RNG keys (int64 [n, 2]) for the samples at (epoch, position): a hash of
    (seed, epoch) and the position, so every sample of the stream gets its own key."""
    epoch_hash = {int(e): np.random.SeedSequence([seed, int(e)]).generate_state(1, np.uint64)
                  .view(np.int64)[0] for e in np.unique(epochs)}
    return np.stack([np.array([epoch_hash[int(e)] for e in epochs], np.int64),
                     np.asarray(positions, np.int64)], axis=1)


def eval_rows(batch: int, global_batch_size: int, process_index: int, process_count: int,
              num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, valid mask) of this process's rows of eval batch `batch`; rows past the
    end of the split are padding (index 0, mask False)."""
    rows = local_rows(batch, global_batch_size, process_index, process_count)
    valid = rows < num_examples
    return np.where(valid, rows, 0), valid
