"""Data parallelism over every device of every process: start-up, the mesh, shardings, global arrays.

The mesh has one axis, 'data'. Batches are split along it and everything else is replicated, so
BatchNorm statistics and the loss are over the global batch and a run does not depend on how many
devices or processes share it. Each process feeds its contiguous rows of the global batch. This
is `jax.jit` over a `Mesh` with `NamedSharding`s, what `jax.pmap` has become.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from manet_jax.errors import ConfigError

DATA_AXIS = "data"
MASK = "mask"  # batch key: 1 for a real example, 0 for padding
INDEX = "index"  # eval batch key: the example's position in its split

Batch = dict[str, np.ndarray]


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins this process to a multi-process run (`jax.distributed.initialize`).

    On a Cloud TPU pod slice (or another cluster JAX detects) no argument is needed; several
    processes on one machine or on hosts without cluster detection pass all three.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices talk across processes
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D 'data' mesh over `devices` (default: all devices of all processes), process by process
    (as JAX lists TPUs by default; the order within a process kept), so that each process's devices
    hold its contiguous rows of a batch, in process order: the rows `global_batch` feeds it."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(sorted(devices, key=lambda device: device.process_index)), (DATA_AXIS,))


def platform(mesh: Mesh) -> str:
    """The platform ('cpu', 'gpu', 'tpu') of the mesh's devices: what its programs compile for."""
    return mesh.devices.flat[0].platform


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def data_parallel(fn: Callable, mesh: Mesh, donate: bool = False, more_args: int = 0) -> Callable:
    """`fn(replicated, batch, *more) -> replicated` jitted over `mesh`: the first argument (state or
    variables) replicated and donated if `donate`, the batch split along 'data', and `more_args`
    more arguments replicated."""
    return jax.jit(fn, in_shardings=(replicated(mesh), batch_sharded(mesh), *[replicated(mesh)] * more_args),
                   out_shardings=replicated(mesh), donate_argnums=(0,) if donate else ())


def check_batch_size(batch_size: int, mesh: Mesh, key: str) -> None:
    """Raises ConfigError naming `key` unless the batch splits evenly over the mesh's devices."""
    if batch_size % mesh.size:
        processes = len({device.process_index for device in mesh.devices.flat})
        raise ConfigError(f"{key}={batch_size} must be a multiple of the number of devices "
                          f"({mesh.size}: {processes} process(es) x {mesh.size // processes})")


def pad_batch(batch: Batch, size: int) -> Batch:
    """`batch` (rows of equal count, at most `size`) padded with zero rows to `size`, with MASK
    (1 for its rows, 0 for the padding) added or extended."""
    count = len(next(iter(batch.values())))
    mask = batch.get(MASK, np.ones(count, np.float32))
    padded = {key: np.concatenate([value, np.zeros((size - count, *value.shape[1:]), value.dtype)])
              for key, value in {**batch, MASK: mask}.items()}
    return padded


def global_batch(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded along 'data'."""
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host arrays that are the same on every process -> global arrays replicated on `mesh`."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda index: np.asarray(x)[index]), tree)


def prefetch_to_device(batches: Iterator[Batch], mesh: Mesh, size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Global batches, with the next `size` already on their way to the devices."""
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for batch in itertools.islice(batches, n):
            queue.append(global_batch(batch, mesh))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
