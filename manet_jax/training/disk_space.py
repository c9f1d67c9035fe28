"""Room on disk for checkpoints: the check before a run and the one-line message when there is none.

A full disk is caught before anything is written: `check_room` (before a run starts) and each
save (`checkpointing.Checkpoints.save`) compare the disk's free space (`storage.free_bytes`) with a
checkpoint's size (its arrays' bytes, `bundle.state_bytes`, or the last complete checkpoint's size
on disk if larger) plus a margin (`storage.with_margin`).
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath

from manet_jax import storage
from manet_jax.bundle import absolute_path, state_bytes
from manet_jax.errors import ManetError
from manet_jax.storage import free_bytes, megabytes, with_margin


class CheckpointSaveError(ManetError, OSError):
    """A checkpoint could not be written; the message names the cause and the last complete one."""


def check_room(directory: epath.PathLike, state: Any) -> None:
    """Raises CheckpointSaveError, before a run starts, if the disk of `directory` has no room for a
    checkpoint of `state` (arrays or abstract arrays), as a save would find later."""
    directory = absolute_path(directory)
    free, size = free_bytes(directory), state_bytes(state)
    if free is not None and free < with_margin(size):
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
        raise CheckpointSaveError(no_space("checkpoints cannot be written to", directory, size, free,
                                            resume_hint(directory, max(steps, default=None))))


def bytes_on_disk(directory: epath.Path) -> int:
    """The size of the files under a local `directory` (0 for a bucket)."""
    if storage.is_url(directory):
        return 0
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names)


def no_space(what: str, directory: epath.Path, size: int | None, free: int | None, hint: str) -> str:
    """'<what> <directory>: no space left on device (a checkpoint needs X MB; Y MB free now); <hint>'."""
    needs = "" if size is None else f"a checkpoint needs {megabytes(size)}"
    room = "; ".join(filter(None, [needs, None if free is None else f"{megabytes(free)} free now"]))
    return f"{what} {directory}: no space left on device{room and f' ({room})'}; {hint}"


def resume_hint(directory: epath.Path, latest: int | None) -> str:
    """Where a run stopped by an error resumes from (checkpoint `latest` in `directory`)."""
    if latest is None:
        return "no checkpoint was saved: run the same command to start again once the cause is fixed"
    return (f"the last complete checkpoint is {directory / str(latest)}: run the same command to resume from it "
            "once the cause is fixed")
