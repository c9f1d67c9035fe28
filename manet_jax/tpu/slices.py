"""Cloud TPU slices by the names users type, and their devices on a machine without a TPU.

`slice_devices('v5p-32')` gives the 16 compile-only devices of a v5p-32 slice (4 hosts) that
libtpu describes; jitting for a mesh of them compiles the program a real slice would run.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import os
from collections.abc import Sequence

import jax

from manet_jax.errors import ConfigError, ManetError

MEGACORE = "megacore"  # one JAX device per chip, both TensorCores together (v4, v5p)
DEFAULT = "default"  # one TensorCore per chip (v5e, v6e)
TORUS = (True, True, True)


@dataclasses.dataclass(frozen=True)
class SliceType:
    """A Cloud TPU accelerator type as libtpu's `get_topology_desc` names it."""

    topology: str  # '<generation>:<chips along each dimension>'
    chip_config: str
    host_bounds: tuple[int, int, int]  # chips of one host (TPU VM) along each dimension
    wrap: tuple[bool, bool, bool] = (False, False, False)  # wrap-around links (a torus) per dimension


# Cloud accelerator type -> topology (cloud.google.com/tpu/docs/v4, v5p, v5e, v6e). v4-N and v5p-N
# count TensorCores, two per chip: v4-8 is 4 chips. v5litepod-N (v5e-N) and v6e-N count chips.
# Slices of up to 8 v5e or v6e chips are one VM; larger ones, and all v4 and v5p slices, are made of
# 4-chip (2x2x1) VMs, one JAX process each. v4 and v5p slices whose sides are all 4 or more are tori.
SLICE_TYPES: dict[str, SliceType] = {
    "v4-8": SliceType("v4:2x2x1", MEGACORE, (2, 2, 1)),
    "v4-16": SliceType("v4:2x2x2", MEGACORE, (2, 2, 1)),
    "v4-32": SliceType("v4:2x2x4", MEGACORE, (2, 2, 1)),
    "v4-64": SliceType("v4:2x4x4", MEGACORE, (2, 2, 1)),
    "v4-128": SliceType("v4:4x4x4", MEGACORE, (2, 2, 1), TORUS),
    "v4-256": SliceType("v4:4x4x8", MEGACORE, (2, 2, 1), TORUS),
    "v4-512": SliceType("v4:4x8x8", MEGACORE, (2, 2, 1), TORUS),
    "v4-1024": SliceType("v4:8x8x8", MEGACORE, (2, 2, 1), TORUS),
    "v4-2048": SliceType("v4:8x8x16", MEGACORE, (2, 2, 1), TORUS),
    "v4-4096": SliceType("v4:8x16x16", MEGACORE, (2, 2, 1), TORUS),
    "v5p-8": SliceType("v5p:2x2x1", MEGACORE, (2, 2, 1)),
    "v5p-16": SliceType("v5p:2x2x2", MEGACORE, (2, 2, 1)),
    "v5p-32": SliceType("v5p:2x2x4", MEGACORE, (2, 2, 1)),
    "v5p-64": SliceType("v5p:2x4x4", MEGACORE, (2, 2, 1)),
    "v5p-128": SliceType("v5p:4x4x4", MEGACORE, (2, 2, 1), TORUS),
    "v5p-256": SliceType("v5p:4x4x8", MEGACORE, (2, 2, 1), TORUS),
    "v5p-512": SliceType("v5p:4x8x8", MEGACORE, (2, 2, 1), TORUS),
    "v5p-1024": SliceType("v5p:8x8x8", MEGACORE, (2, 2, 1), TORUS),
    "v5p-2048": SliceType("v5p:8x8x16", MEGACORE, (2, 2, 1), TORUS),
    "v5p-4096": SliceType("v5p:8x16x16", MEGACORE, (2, 2, 1), TORUS),
    "v5litepod-1": SliceType("v5e:1x1", DEFAULT, (1, 1, 1)),
    "v5litepod-4": SliceType("v5e:2x2", DEFAULT, (2, 2, 1)),
    "v5litepod-8": SliceType("v5e:2x4", DEFAULT, (2, 4, 1)),
    "v5litepod-16": SliceType("v5e:4x4", DEFAULT, (2, 2, 1)),
    "v5litepod-32": SliceType("v5e:4x8", DEFAULT, (2, 2, 1)),
    "v5litepod-64": SliceType("v5e:8x8", DEFAULT, (2, 2, 1)),
    "v5litepod-128": SliceType("v5e:8x16", DEFAULT, (2, 2, 1), (False, True, False)),
    "v5litepod-256": SliceType("v5e:16x16", DEFAULT, (2, 2, 1), (True, True, False)),
    "v6e-1": SliceType("v6e:1x1", DEFAULT, (1, 1, 1)),
    "v6e-4": SliceType("v6e:2x2", DEFAULT, (2, 2, 1)),
    "v6e-8": SliceType("v6e:2x4", DEFAULT, (2, 4, 1)),
    "v6e-16": SliceType("v6e:4x4", DEFAULT, (2, 2, 1)),
    "v6e-32": SliceType("v6e:4x8", DEFAULT, (2, 2, 1)),
    "v6e-64": SliceType("v6e:8x8", DEFAULT, (2, 2, 1)),
    "v6e-128": SliceType("v6e:8x16", DEFAULT, (2, 2, 1), (False, True, False)),
    "v6e-256": SliceType("v6e:16x16", DEFAULT, (2, 2, 1), (True, True, False)),
}
ALIASES = {"v5e-": "v5litepod-"}  # what users also write -> Cloud's name


class LibtpuMissingError(ManetError):
    """libtpu, which compiles for TPUs, is not installed."""


def slice_type(name: str) -> tuple[str, SliceType]:
    """(Cloud's name, its SliceType) for an accelerator type such as 'v5p-32' or 'v5e-8'."""
    cloud_name = name.strip().lower()
    for alias, canonical in ALIASES.items():
        if cloud_name.startswith(alias):
            cloud_name = canonical + cloud_name.removeprefix(alias)
    if cloud_name not in SLICE_TYPES:
        raise ConfigError(f"unknown TPU type {name!r}; known: {', '.join(SLICE_TYPES)} "
                          f"(v5e-N is accepted for v5litepod-N)")
    return cloud_name, SLICE_TYPES[cloud_name]


def start_libtpu(cloud_name: str) -> None:
    """Gets libtpu ready to compile for TPUs on a machine without one; call before it loads.

    JAX keeps to the CPU for its own arrays. The accelerator type and worker names keep libtpu
    from logging that it cannot find them (they change nothing that is compiled), and several
    processes may load it at once (otherwise the second one fails on /tmp/libtpu_lockfile).
    Settings already in the environment win.
    """
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise LibtpuMissingError(
            f"compiling for a TPU needs libtpu, which is not installed: pip install -e '.[tpu]' "
            f"(or pip install 'jax[tpu]=={importlib.metadata.version('jax')}')") from None
    for key, value in {"JAX_PLATFORMS": "cpu", "TPU_ACCELERATOR_TYPE": cloud_name, "TPU_WORKER_HOSTNAMES": "localhost",
                       "TPU_SKIP_MDS_QUERY": "1", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}.items():
        os.environ.setdefault(key, value)


def slice_devices(name: str, num_slices: int = 1) -> list[jax.Device]:
    """The compile-only devices of `num_slices` slices of TPU type `name` (joined over the
    data-center network when more than one), in the order of their hosts."""
    from jax.experimental import topologies

    if num_slices < 1:
        raise ConfigError(f"--num-slices must be >= 1, got {num_slices}")
    cloud_name, kind = slice_type(name)
    start_libtpu(cloud_name)
    description = topologies.get_topology_desc(
        platform="tpu", topology_name=kind.topology, chip_config_name=kind.chip_config,
        chips_per_host_bounds=kind.host_bounds, wrap=kind.wrap, num_slices=num_slices)
    return list(description.devices)


def hosts(devices: Sequence[jax.Device]) -> dict[int, list[jax.Device]]:
    """Process index -> its devices, in order."""
    by_host: dict[int, list[jax.Device]] = collections.defaultdict(list)
    for device in devices:
        by_host[device.process_index].append(device)
    return dict(sorted(by_host.items()))
