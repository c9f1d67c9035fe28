"""Whether a checkpoint can be restored, checked before Orbax reads it: its small JSON files, its
arrays' shapes and dtypes against the target state, and its arrays' data read in full.

Each check names what is wrong (a file, an array), where Orbax's own errors name no key or come as
unawaited reads reported with tracebacks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tensorstore as ts
from etils import epath

from manet_jax.bundle import HEADER, HEADER_FILE

HOST_STATE = "host_state"  # the Orbax item of a checkpoint's JSON run state
# A checkpoint's small JSON files, which Orbax reads outside any restore (the metrics as it opens
# the directory), and whether every checkpoint has one.
JSON_FILES = {"_CHECKPOINT_METADATA": True, f"{HEADER}/{HEADER_FILE}": True, f"{HOST_STATE}/metadata": True,
              "metrics/metrics": False}
# An array's metadata key in an item's OCDBT database (Orbax's layout) -> tensorstore's driver for it.
ARRAY_DRIVERS = {".zarray": "zarr", "zarr.json": "zarr3"}


class CheckpointDamagedError(ValueError):
    """An array of a checkpoint cannot be read in full; the message names the array and the error."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's arrays differ in shape or dtype from the state they would restore into."""


def json_problem(step_directory: epath.Path) -> str | None:
    """What is wrong with a checkpoint's JSON files (a missing one, one that does not parse), if anything."""
    for name, required in JSON_FILES.items():
        path = step_directory / name
        if not path.exists():
            if required:
                return f"{name} is missing"
            continue
        try:
            json.loads(path.read_text())
        except ValueError as e:
            return f"{name} is damaged: {e}"
    return None


def check_readable(checkpoint: epath.Path, items: Sequence[str]) -> None:
    """Raises CheckpointDamagedError naming the first array of `items` (Orbax items of arrays, each
    an OCDBT database of zarr arrays) whose data cannot be read in full: after a failed restore,
    whose error does not name the array. Read one by one with tensorstore, each read awaited."""
    for item in items:
        database = {"driver": "ocdbt", "base": str(checkpoint / item).rstrip("/") + "/"}
        if "://" not in database["base"]:
            database["base"] = "file://" + database["base"]
        array = ""
        try:
            for key in sorted(key.decode() for key in ts.KvStore.open(database).result().list().result()):
                array, _, name = key.rpartition("/")
                if name in ARRAY_DRIVERS:
                    spec = {"driver": ARRAY_DRIVERS[name], "kvstore": {**database, "path": f"{array}/"}}
                    ts.open(spec, open=True, read=True).result().read().result()
        except Exception as e:  # tensorstore's ValueError, or an OSError
            where = f"{item}/{array}" if array else item
            raise CheckpointDamagedError(f"{where} is damaged: {str(e).strip().splitlines()[0]}") from e


def check_matches(saved: Any, target: Any, shown: int = 5) -> None:
    """Raises CheckpointMismatchError naming the arrays whose shape or dtype differ between a
    checkpoint's metadata and the target (checked before restoring: Orbax's own error names no key)."""
    def arrays(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {jax.tree_util.keystr(path, simple=True, separator="/"): (tuple(leaf.shape), np.dtype(leaf.dtype))
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    ours, theirs = arrays(target), arrays(saved)
    differences = [f"{key}: only in the checkpoint" for key in sorted(theirs.keys() - ours.keys())]
    differences += [f"{key}: not in the checkpoint" for key in sorted(ours.keys() - theirs.keys())]
    differences += [f"{key}: checkpoint {theirs[key][0]} {theirs[key][1]}, this config {ours[key][0]} {ours[key][1]}"
                    for key in ours if key in theirs and ours[key] != theirs[key]]  # in the state's order
    if differences:
        more = f"; and {len(differences) - shown} more" if len(differences) > shown else ""
        raise CheckpointMismatchError(f"{len(differences)} array(s) differ from this config: "
                                      + "; ".join(differences[:shown]) + more)
