"""Where prepared datasets and manual downloads live by default."""

from __future__ import annotations

import os
from pathlib import Path

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
