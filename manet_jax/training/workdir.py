"""A trainer workdir's own files, and its summary as tools read it.

`config.json` is the run's resolved config. `summary.json` holds its best and its last evaluation:
`{"ranked_by": "fed_ro/test", "best": entry, "last": entry}`, where an entry is `{"epoch", "step",
"eval": {eval set: results}}` with the results of every eval set (`evaluation.evaluate_set`); the
best is the entry with the highest fused accuracy on the `ranked_by` set (the first eval set), the
earliest on ties. Light to import: the report tool reads summaries without starting JAX.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from etils import epath

from manet_jax import storage
from manet_jax.errors import ManetError

CONFIG_FILE, SUMMARY_FILE, PROFILE = "config.json", "summary.json", "profile"
# What a trainer writes in its workdir (see loop.py; the lease file is lease.LEASE_FILE)
TRAINER_FILES = frozenset({CONFIG_FILE, SUMMARY_FILE, "lease.json", "metrics.jsonl", "checkpoints",
                           "checkpoints_corrupt", "tensorboard"})

logger = logging.getLogger(__name__)


class SummaryError(ManetError, ValueError):
    """A workdir without a readable summary; the message names the file."""


class WorkdirError(ManetError, ValueError):
    """A --workdir the trainer cannot or must not write to; the message names it and why."""


def check_workdir(workdir: str) -> None:
    """Raises WorkdirError, before anything is written, for a workdir the trainer must not use: an
    empty one (an unset variable), a regular file or a path beneath one, a directory it cannot
    write to, or an existing directory that holds none of a trainer's files (`TRAINER_FILES`) but
    other files, or is the current directory (a source checkout, a home directory). A new or empty
    directory, or one a trainer wrote to, is a workdir. A URL must be a well-formed `gs://` one
    whose bucket exists and can be reached, and is held to the same rule about other files."""
    if not workdir.strip():
        raise WorkdirError("--workdir is empty (an unset variable?): give the run a directory of its own, "
                           "e.g. --workdir runs/demo")
    if storage.is_url(workdir):
        storage.check_bucket(workdir, "--workdir")
        url = epath.Path(workdir)
        _check_entries(workdir, {p.name for p in url.iterdir()} if url.is_dir() else set())
        return
    path = Path(workdir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())  # the root exists
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies beneath the file {existing}"
        raise WorkdirError(f"--workdir {workdir} {where}, not a directory: give the run a directory of its own")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir} cannot be written: {existing} is read-only (a read-only file system "
                           "or no write permission); give a workdir where this user can write")
    if existing != path:
        return
    if path.resolve() == Path.cwd().resolve() and not set(os.listdir(path)) & TRAINER_FILES:
        raise WorkdirError(f"--workdir {workdir} is the current directory; a run writes checkpoints and logs into a "
                           "directory of its own: give a new one, e.g. --workdir runs/demo")
    _check_entries(workdir, set(os.listdir(path)))


def _check_entries(workdir: str, entries: set[str]) -> None:
    """Raises WorkdirError for a workdir that holds other files and none of a trainer's."""
    if entries and not entries & TRAINER_FILES:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise WorkdirError(f"--workdir {workdir} holds other files ({shown}) and none of a trainer's: a run writes "
                           "checkpoints and logs into a directory of its own: give a new or empty one, "
                           "e.g. --workdir runs/demo")


def remove_temporary_files(directory: epath.PathLike, in_use: Collection[str] = ()) -> None:
    """Deletes the temporary files of `storage.replace_text` that a run killed while writing left in
    `directory`, except those of the files `in_use` (a thread of this run may be writing them).
    Call it holding the directory's lease: another trainer's temporary files are in use."""
    for path in epath.Path(directory).glob(".*.tmp*"):
        match = storage.TEMPORARY.fullmatch(path.name)
        if match and match.group(1) not in in_use:
            logger.warning("removing %s, left by a run killed while writing it", path)
            path.unlink(missing_ok=True)


def read_summary(workdir: epath.PathLike) -> dict[str, Any]:
    """The summary of the run in `workdir` (also one written before eval sets)."""
    workdir = epath.Path(workdir)
    path = workdir / SUMMARY_FILE
    if not path.is_file():
        raise SummaryError(f"{workdir}: no {SUMMARY_FILE}; not a trainer workdir, or no epoch evaluated yet")
    try:
        summary = json.loads(path.read_text())
        return upgraded(summary, json.loads((workdir / CONFIG_FILE).read_text())["dataset"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SummaryError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e


def upgraded(summary: dict[str, Any], dataset: str) -> dict[str, Any]:
    """`summary` in the current format. Summaries written before eval sets hold one evaluation per
    entry, of `dataset` (the run's config.dataset) and the split it names."""
    if "ranked_by" in summary:
        return summary
    current: dict[str, Any] = {"ranked_by": None}
    for key in ("best", "last"):
        entry = summary.get(key)
        if entry is not None:
            current["ranked_by"] = f"{dataset}/{entry['eval']['split']}"
            entry = {**entry, "eval": {current["ranked_by"]: {"dataset": dataset, **entry["eval"]}}}
        current[key] = entry
    return current
