"""A trainer workdir's own files, its summary as tools read it, and the lease that keeps one trainer
per workdir.

`config.json` is the run's resolved config. `summary.json` holds its best and its last evaluation:
`{"ranked_by": "fed_ro/test", "best": entry, "last": entry}`, where an entry is `{"epoch", "step",
"eval": {eval set: results}}` with the results of every eval set (`evaluation.evaluate_set`); the
best is the entry with the highest fused accuracy on the `ranked_by` set (the first eval set), the
earliest on ties. Light to import: the report tool reads summaries without starting JAX.

The lease file `<workdir>/lease.json` is held while a trainer runs there. It names its holder
(host, pid, start time) and carries a random token. The first trainer creates it atomically (on a
local disk a hard link to a complete file; in a `gs://` bucket an upload on the condition that no
such object exists, generation 0) and rewrites it every REFRESH_SECONDS (in a bucket on the
condition that it is still the generation it wrote). A second trainer finds it and stops with
WorkdirBusyError naming the holder. A lease whose holder is gone (its pid no longer runs on this
machine; from another machine, no refresh for STALE_SECONDS) is taken over with a warning (in a
bucket by a rewrite on the condition of the generation it read, so of two trainers taking it over
one wins). The holder reads its token back before each write to the workdir (`check_held`, called
by what writes there: the metric writer, the checkpoints, the run summary), so that a trainer that
lost the lease stops before it writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from etils import epath

from manet_jax import storage
from manet_jax.errors import ManetError


CONFIG_FILE, SUMMARY_FILE, PROFILE, LEASE_FILE = "config.json", "summary.json", "profile", "lease.json"
# What a trainer writes in its workdir (see run.py)
TRAINER_FILES = frozenset({CONFIG_FILE, SUMMARY_FILE, LEASE_FILE, "metrics.jsonl", "checkpoints",
                           "checkpoints_corrupt", "tensorboard"})
REFRESH_SECONDS = 30  # how often the lease's holder rewrites it
STALE_SECONDS = 300  # a lease from another machine is taken over after this long without a refresh

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


class WorkdirBusyError(ManetError, RuntimeError):
    """Another trainer holds the workdir's lease; the message names it."""


class LeaseLostError(ManetError, RuntimeError):
    """Another trainer took over this trainer's lease; the message names it."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease: the contents of the lease file."""

    host: str
    pid: int
    started: str  # local time, ISO 8601
    token: str
    machine: str | None  # the boot id (Linux): the same host name on another machine is another host
    process: str | None  # the process's start time (Linux): a reused pid is another process
    refreshed: float  # time.time() of the last refresh

    @classmethod
    def this_process(cls) -> Holder:
        now = time.time()
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   started=datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
                   token=secrets.token_hex(8), machine=_boot_id(), process=_process_start(os.getpid()),
                   refreshed=now)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def gone(self) -> bool:
        """Whether the holder no longer runs: no process of its pid and start time runs on this
        machine, or, seen from another machine, it has not refreshed for STALE_SECONDS."""
        if self.host == socket.gethostname() and self.machine == _boot_id():
            return not _running(self.pid, self.process)
        return time.time() - self.refreshed > STALE_SECONDS


class Lease:
    """The lease of `workdir`, held by this process (see `acquire`)."""

    def __init__(self, workdir: epath.PathLike):
        self.workdir = epath.Path(workdir)
        self.path = self.workdir / LEASE_FILE
        self.holder = Holder.this_process()
        self._generation: int | None = None  # in a bucket: the lease object's generation this process wrote
        self._stop = threading.Event()
        # A check waits for a refresh under way: gcsfs reads an object rewritten meanwhile cut to
        # the size it had, a lease that looks damaged, and so lost.
        self._refreshing = threading.Lock()
        self._refresher = threading.Thread(target=self._refresh, name="lease_refresh", daemon=True)

    @classmethod
    def acquire(cls, workdir: epath.PathLike) -> Lease:
        """Takes the lease of an existing `workdir`, taking over one whose holder is gone; raises
        WorkdirBusyError naming the holder if another trainer holds it."""
        lease = cls(workdir)
        if storage.is_url(lease.path):
            lease._acquire_in_bucket()
        else:
            lease._acquire_on_disk()
        lease._refresher.start()
        return lease

    def _acquire_on_disk(self) -> None:
        for _ in range(2):
            if _create(self.path, self._text()):
                return
            holder = self.read()
            self._refuse_unless_gone(holder)
            self.path.unlink(missing_ok=True)
        raise WorkdirBusyError(f"{self.workdir}: another trainer took the lease {self.path} at the same time")

    def _acquire_in_bucket(self) -> None:
        url = str(self.path)
        self._generation = storage.write_object_if(url, self._text(), 0)
        if self._generation is not None:
            return
        found = storage.read_object(url)
        holder = _holder(found[0]) if found else None
        if holder is not None and holder.token == self.holder.token:  # a retried upload that had succeeded
            self._generation = found[1]
            return
        self._refuse_unless_gone(holder)
        self._generation = storage.write_object_if(url, self._text(), found[1] if found else 0)
        if self._generation is None:
            raise WorkdirBusyError(f"{self.workdir}: another trainer took the lease {self.path} at the same time")

    def _refuse_unless_gone(self, holder: Holder | None) -> None:
        """Raises WorkdirBusyError unless the lease's `holder` is gone; warns of the takeover."""
        if holder is not None and not holder.gone():
            raise WorkdirBusyError(
                f"{self.workdir} is in use by another trainer ({holder.describe()}; {self.path}). Wait for it "
                f"to finish, stop it, or use another workdir; a lease whose trainer has gone is taken over (from "
                f"another machine {STALE_SECONDS // 60} minutes after its last refresh)")
        logger.warning("taking over the lease %s of a trainer that is gone (%s)", self.path,
                       holder.describe() if holder else "the file cannot be read")

    def _text(self, **changes: Any) -> str:
        return json.dumps(dataclasses.asdict(dataclasses.replace(self.holder, **changes)))

    def read(self) -> Holder | None:
        """The lease file's holder; None if there is no file or it cannot be read (raises the error
        of a bucket that cannot be reached)."""
        try:
            return _holder(self.path.read_text())
        except OSError as e:  # a bucket that cannot be reached is not a lost lease: the caller reports it
            if storage.is_url(self.path) and storage.unreachable(e):
                raise
            return None

    def check(self) -> None:
        """Raises LeaseLostError unless this process still holds the lease."""
        with self._refreshing:
            holder = self.read()
        if holder is None or holder.token != self.holder.token:
            now = holder.describe() if holder else "nobody: the file is gone or damaged"
            raise LeaseLostError(f"this trainer ({self.holder.describe()}) lost the lease {self.path}; it is now "
                                 f"held by {now}. Stopped without writing to {self.workdir}: run one trainer per "
                                 "workdir")

    def release(self) -> None:
        """Stops refreshing and deletes the lease file if it is still this process's."""
        self._stop.set()
        if self._refresher.is_alive():
            self._refresher.join()
        try:
            holder = self.read()
        except OSError as e:  # the bucket is gone (the run reports it): the lease goes stale, and is taken over
            logger.debug("cannot release the lease %s: %s", self.path, e)
            return
        if holder is not None and holder.token == self.holder.token:
            if self._generation is not None:
                storage.delete_object_if(str(self.path), self._generation)
            else:
                self.path.unlink(missing_ok=True)

    def _refresh(self) -> None:
        """Rewrites the lease with the time every REFRESH_SECONDS while it is this process's."""
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                with self._refreshing:
                    if not self._rewrite():
                        return  # another trainer rewrote it: `check` reports it before the next write
            except Exception as e:  # a full disk or a bucket's hiccup: the next refresh tries again
                logger.warning("cannot refresh the lease %s: %s", self.path, e)

    def _rewrite(self) -> bool:
        """Rewrites the lease with the time if it is still this process's; False if it is not."""
        holder = self.read()
        if holder is None or holder.token != self.holder.token:
            return False
        if self._generation is None:
            storage.replace_text(self.path, self._text(refreshed=time.time()))
            return True
        generation = storage.write_object_if(str(self.path), self._text(refreshed=time.time()), self._generation)
        if generation is None:
            return False
        self._generation = generation
        return True


def check_held(lease: Lease | None) -> None:
    """Raises LeaseLostError, before a write to the workdir, if another trainer took `lease` (None:
    a process that holds none, as all but process 0)."""
    if lease is not None:
        lease.check()


@contextlib.contextmanager
def hold(workdir: epath.PathLike) -> Iterator[Lease | None]:
    """Creates `workdir` and holds its lease for the `with` block: process 0 takes it (the others
    get None); every process raises WorkdirBusyError when process 0 could not take it, or
    WorkdirError when it could not write there."""
    import jax  # here: the report tool reads summaries without starting JAX
    import numpy as np
    from jax.experimental import multihost_utils

    lease, error = None, None
    if jax.process_index() == 0:
        try:
            epath.Path(workdir).mkdir(parents=True, exist_ok=True)
            lease = Lease.acquire(workdir)
        except WorkdirBusyError as e:
            error = e
        except OSError as e:  # what `workdir.check_workdir` could not foresee (a bucket without access)
            if not isinstance(e, (FileExistsError, NotADirectoryError, PermissionError)) and e.errno != errno.EROFS:
                raise
            error = WorkdirError(f"{workdir} cannot be written: {e.strerror or e}")
    if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(error is None)):
        error = error or WorkdirBusyError(f"process 0 could not take the lease of {workdir} (see its error)")
    if error is not None:
        raise error
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


def _holder(text: str) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None


def _create(path: epath.Path, text: str) -> bool:
    """Writes `text` to a new local file `path`; False if `path` exists. Atomic (a hard link to a
    complete temporary file); on a disk without hard links a check then a write: two trainers
    starting at the same moment may both write, and the later's token wins at the first `check`."""
    temporary = Path(path).with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        pass
    finally:
        temporary.unlink()
    if path.exists():
        return False
    path.write_text(text)
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(pid: int, process: str | None) -> bool:
    """Whether `pid` runs on this machine, as the process that started at `process` if known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return process is None or _process_start(pid) in (None, process)
