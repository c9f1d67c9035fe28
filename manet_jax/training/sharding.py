"""Data parallelism over every device of every process: start-up, the mesh, shardings, global arrays.

The mesh has one axis, 'data'. Batches are split along it and everything else is replicated, so
BatchNorm statistics and the loss are over the global batch and a run does not depend on how many
devices or processes share it. Each process feeds its contiguous rows of the global batch.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from manet_jax.training.config import ConfigError

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins this process to a multi-process run (`jax.distributed.initialize`).

    On a Cloud TPU pod slice (or another cluster JAX detects) no argument is needed; several
    processes on one machine or on hosts without cluster detection pass all three.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices talk across processes
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D 'data' mesh over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, key: str) -> None:
    """Raises ConfigError naming config.`key` unless the batch splits evenly over the devices."""
    if batch_size % mesh.size:
        raise ConfigError(f"config.{key}={batch_size} must be a multiple of the number of devices "
                         f"({mesh.size}: {jax.process_count()} process(es) x {jax.local_device_count()})")


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded along 'data'."""
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host arrays that are the same on every process -> global arrays replicated on `mesh`."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def prefetch_to_device(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, size: int = 2
                       ) -> Iterator[dict[str, jax.Array]]:
    """Global batches, with the next `size` already on their way to the devices."""
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for batch in itertools.islice(batches, n):
            queue.append(global_batch(batch, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
