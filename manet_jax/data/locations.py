"""Where prepared datasets and manual downloads live by default."""

from __future__ import annotations

import os
from pathlib import Path

from manet_jax import storage
from manet_jax.data.errors import DataDirError

DATA_DIR_ENV = "MANET_DATA_DIR"


def default_data_dir() -> str:
    """$MANET_DATA_DIR, else the repository's `data/` folder if it exists, else
    ~/tensorflow_datasets."""
    if os.environ.get(DATA_DIR_ENV):
        return os.path.expanduser(os.environ[DATA_DIR_ENV])
    repo_data = Path(__file__).resolve().parents[2] / "data"
    if repo_data.is_dir():
        return str(repo_data)
    return os.path.expanduser("~/tensorflow_datasets")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """`data_dir` with `~` expanded, or the default data dir when it is None."""
    return os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()


def default_manual_dir(data_dir: str | os.PathLike | None, builder_name: str) -> str:
    """`<data_dir>/downloads/manual/<builder_name>`, where `prepare` looks for manual downloads."""
    return os.path.join(resolve_data_dir(data_dir), "downloads", "manual", builder_name)


def check_data_dir(data_dir: str | os.PathLike | None, writable: bool = False) -> str:
    """The resolved data dir (`resolve_data_dir`); raises DataDirError naming it when it is a file
    or lies beneath one, or, if `writable`, when it cannot be created or written to, and for a URL
    (gs://): datasets are read from a local disk."""
    resolved = resolve_data_dir(data_dir)
    if storage.is_url(resolved):
        raise DataDirError(f"data dir {resolved}: datasets are read from a local disk, not a bucket: copy the "
                           "prepared dataset to each worker's disk (docs/training.md#several-devices-several-hosts) and give its local path "
                           "(config.data_dir, a tool's --data-dir or $MANET_DATA_DIR)")
    path = Path(resolved).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())  # the root exists
    where = "config.data_dir, a tool's --data-dir or $MANET_DATA_DIR"
    if not existing.is_dir():
        problem = "is a file" if existing == path else f"lies beneath the file {existing}"
        raise DataDirError(f"data dir {resolved} {problem}, not a directory; give a directory ({where})")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise DataDirError(f"data dir {resolved} cannot be written: {existing} is read-only (a read-only file "
                           f"system or no write permission); give a directory where this user can write ({where})")
    return resolved
