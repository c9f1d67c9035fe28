"""Model checkpoints on disk: Orbax directories holding MANet variables plus a small JSON header.

A converted (or exported) checkpoint is a directory with `variables/` (an Orbax
StandardCheckpointer tree `{'params', 'batch_stats'}`) and `manet.json` (`num_classes`,
`class_names` when known, and where the weights came from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

HEADER = "manet.json"
VARIABLES = "variables"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used; the message names the path and the cause."""


def save_variables(directory: str | Path, variables: dict, *, num_classes: int,
                   class_names: list[str] | None = None, source: str = "") -> Path:
    """Writes `variables` ({'params', 'batch_stats'}) and the header to a new directory."""
    directory = Path(directory).absolute()
    if (directory / VARIABLES).exists():
        raise CheckpointError(f"{directory}: already holds a checkpoint; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / VARIABLES, jax.device_get(variables))
    header = {"num_classes": num_classes, "class_names": class_names, "source": source}
    (directory / HEADER).write_text(json.dumps(header, indent=2) + "\n")
    return directory


def load_variables(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as NumPy arrays, header) of a checkpoint directory written by `save_variables`."""
    directory = Path(directory).absolute()
    if not (directory / HEADER).is_file() or not (directory / VARIABLES).is_dir():
        raise CheckpointError(f"{directory}: not a manet-jax checkpoint (expected {HEADER} and {VARIABLES}/)")
    header = json.loads((directory / HEADER).read_text())
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(directory / VARIABLES)
    except Exception as e:  # orbax raises several types for damaged trees
        raise CheckpointError(f"{directory / VARIABLES}: cannot be restored ({type(e).__name__}: {e})") from e
    return jax.tree_util.tree_map(np.asarray, variables), header
