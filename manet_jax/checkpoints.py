"""Model checkpoints on disk: Orbax directories holding MANet variables plus a small JSON header.

A converted (or exported) checkpoint is a directory with `variables/` (an Orbax
StandardCheckpointer tree `{'params', 'batch_stats'}`) and `manet.json` (`num_classes`,
`class_names` when known, and where the weights came from). A trainer workdir has the same
`manet.json` next to `checkpoints/` (see `manet_jax.training.checkpointing`).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from manet_jax.training.checkpointing import CHECKPOINTS, Checkpoints, absolute_path

HEADER = "manet.json"
VARIABLES = "variables"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used; the message names the path and the cause."""


def save_variables(directory: epath.PathLike, variables: dict, *, num_classes: int,
                   class_names: list[str] | None = None, source: str = "") -> epath.Path:
    """Writes `variables` ({'params', 'batch_stats'}) and the header to a new directory."""
    directory = absolute_path(directory)
    if (directory / VARIABLES).exists():
        raise CheckpointError(f"{directory}: already holds a checkpoint; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / VARIABLES, jax.device_get(variables))
    write_header(directory, num_classes=num_classes, class_names=class_names, source=source)
    return directory


def write_header(directory: epath.PathLike, *, num_classes: int, class_names: list[str] | None = None,
                 source: str = "") -> None:
    """Writes `manet.json` (what the variables classify and where they came from) to `directory`."""
    header = {"num_classes": num_classes, "class_names": class_names, "source": source}
    (epath.Path(directory) / HEADER).write_text(json.dumps(header, indent=2) + "\n")


def load_variables(directory: epath.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as NumPy arrays, header) of a checkpoint directory written by `save_variables`,
    or of a trainer workdir: its best checkpoint by eval accuracy, else its latest (the header
    then also has `step`)."""
    directory = absolute_path(directory)
    if (directory / HEADER).is_file() and (directory / CHECKPOINTS).is_dir():
        header = json.loads((directory / HEADER).read_text())
        try:
            variables, header["step"] = Checkpoints(directory / CHECKPOINTS, read_only=True).restore_variables()
        except Exception as e:  # orbax raises several types for damaged trees
            raise CheckpointError(f"{directory / CHECKPOINTS}: cannot be restored ({type(e).__name__}: {e})") from e
        return variables, header
    if not (directory / HEADER).is_file() or not (directory / VARIABLES).is_dir():
        raise CheckpointError(f"{directory}: not a manet-jax checkpoint (expected {HEADER} and {VARIABLES}/, "
                              f"or a trainer workdir with {HEADER} and {CHECKPOINTS}/)")
    header = json.loads((directory / HEADER).read_text())
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(directory / VARIABLES)
    except Exception as e:  # orbax raises several types for damaged trees
        raise CheckpointError(f"{directory / VARIABLES}: cannot be restored ({type(e).__name__}: {e})") from e
    return jax.tree_util.tree_map(np.asarray, variables), header
