"""Where the tools keep their files: local paths and Cloud Storage (`gs://bucket/...`) alike.

Everything a tool reads or writes outside Orbax's arrays goes through etils `epath`, which for
`gs://` uses fsspec's gcsfs (`EPATH_USE_TF=false`, set by `configure`, the tools' start): gcsfs
takes Google's default credentials (a TPU VM's service account from the metadata server), retries
failed requests and uploads large files in parts, and honours `STORAGE_EMULATOR_HOST`, so a test
runs the path a TPU VM runs against a local emulator. TensorFlow's own `gs://` filesystem, which
epath would use otherwise, has fixed endpoints. Orbax writes its arrays with tensorstore, which
takes the same credentials (`TENSORSTORE_GCS_HTTP_URL` points it at an emulator). A workdir's
lease needs conditional writes (`create`, `rewrite` on a generation), which only Google's own
client, google-cloud-storage, offers; it honours `STORAGE_EMULATOR_HOST` too.

What the tools write they write whole or not at all (`writing`): each output is checked before the
work starts (`check_outputs`), written as a temporary sibling (`temporary_sibling`), moved into
place when complete and removed on any failure, which is raised as one `OutputError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from etils import epath

from manet_jax.errors import ManetError, is_disk_full

SCHEME = "gs://"
# Cloud Storage's bucket names: 3-63 characters of lower-case letters, digits, '-', '_' and '.',
# beginning and ending with a letter or digit (tensorstore refuses any other).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
# The temporary sibling of the file or folder group(1) (`temporary_sibling`): written, then moved into place.
TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp(?:\.[^.]*)?")
# Room a write needs beyond its files' size: metadata files and the file system's blocks.
MARGIN_FACTOR, MARGIN_BYTES = 1.05, 1_000_000


class StorageError(ManetError, OSError):
    """A URL that is malformed, a bucket that does not exist or cannot be reached; the message names it."""


class OutputError(ManetError, OSError):
    """An output a tool cannot write where it was asked to; the message names it and why."""


def configure() -> None:
    """The tools' start, before anything uses etils epath (it reads EPATH_USE_TF once, at its first
    path operation of any kind): `gs://` paths through gcsfs, not TensorFlow's filesystem; and
    gcsfs's plain client (its experimental one asks a control API for each bucket's layout, which
    an emulator lacks, and logs a warning for every file when it cannot)."""
    os.environ["EPATH_USE_TF"] = "false"
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def is_url(path: epath.PathLike) -> bool:
    return "://" in os.fspath(path)


def bucket_and_name(url: epath.PathLike) -> tuple[str, str]:
    """('bucket', 'object/name') of a `gs://bucket/object/name` URL."""
    bucket, _, name = os.fspath(url).removeprefix(SCHEME).partition("/")
    return bucket, name.rstrip("/")


def check_url(url: str, what: str) -> None:
    """Raises StorageError naming `what` (an option or key) unless `url` is a well-formed
    `gs://bucket/...` URL, and the tools' start (`configure`) has set up the `gs://` path."""
    if not url.startswith(SCHEME):
        scheme = url.partition("://")[0]
        raise StorageError(f"{what} {url}: {scheme}:// is not supported; give a local path or a gs://bucket/... URL")
    bucket, _ = bucket_and_name(url)
    if not _BUCKET.fullmatch(bucket):
        raise StorageError(f"{what} {url}: {bucket!r} is not a Cloud Storage bucket name (3-63 lower-case letters, "
                           "digits, '-', '_' or '.', beginning and ending with a letter or digit)")
    if os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0"):
        raise StorageError(f"{what} {url}: gs:// paths need EPATH_USE_TF=false (etils epath on gcsfs; the tools "
                           "set it as they start): set it before the process first uses etils epath")


def check_bucket(url: str, what: str) -> None:
    """Raises StorageError naming `what` and the bucket unless `url` is well formed and its bucket
    exists and can be listed with this machine's credentials (one request)."""
    check_url(url, what)
    bucket, name = bucket_and_name(url)
    try:
        next(iter(client().list_blobs(bucket, prefix=name, max_results=1)), None)
    except Exception as e:  # google-api-core's errors, google-auth's, requests' connection errors
        raise StorageError(f"{what} {url}: {explain(e, bucket)}") from e


def explain(error: BaseException, bucket: str) -> str:
    """What went wrong in a request to `bucket`, in words, for an `error:` line."""
    from google.api_core import exceptions

    if isinstance(error, exceptions.NotFound):
        return f"the bucket gs://{bucket} does not exist (create it, or check the name)"
    if isinstance(error, exceptions.Forbidden):
        return (f"this machine's credentials may not use gs://{bucket} (on a TPU VM: its service account needs "
                "Storage Object Admin on the bucket)")
    if type(error).__name__ == "DefaultCredentialsError":
        return (f"no credentials for gs://{bucket}: on a Cloud VM they come from its service account; elsewhere run "
                "`gcloud auth application-default login`")
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"gs://{bucket} cannot be reached ({type(error).__name__}: {first[:300]})"


def unreachable(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is a failed connection to a storage service:
    the network or the service gone, as opposed to a refusal."""
    names = ("ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ConnectionError",
             "ServiceUnavailable", "RetryError", "ConnectTimeout")
    seen, pending = set(), [error]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__name__ in names or "Connection refused" in str(e) or "UNAVAILABLE" in str(e):
            return True
        pending += [e.__cause__, e.__context__]
    return False


@functools.cache
def client() -> Any:
    """google-cloud-storage's client: default credentials, or anonymous with an emulator."""
    from google.cloud import storage

    return storage.Client()


def replace_text(path: epath.PathLike, text: str) -> None:
    """Replaces the file `path` with `text` whole or not at all (see `replace_bytes`)."""
    _replace(epath.Path(path), lambda target: target.write_text(text))


def replace_bytes(path: epath.PathLike, data: bytes) -> None:
    """Replaces the file `path` with `data` whole or not at all. An object in a bucket is replaced
    whole by one upload; a local file by renaming a complete temporary file (`temporary_sibling`)
    over it, so a full disk or a killed run leaves the old file."""
    _replace(epath.Path(path), lambda target: target.write_bytes(data))


def _replace(path: epath.Path, write: Callable[[epath.Path], Any]) -> None:
    if is_url(path):
        write(path)
        return
    temporary = temporary_sibling(path)
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        _remove(temporary)


def temporary_sibling(path: epath.Path) -> epath.Path:
    """A new name beside `path` for writing it, named for this write alone (TEMPORARY matches it); it
    ends in `path`'s suffix, as writers that choose the format by the name (OpenCV, NumPy) need."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")


_under_way: list[tuple[list[epath.Path], set[epath.Path]]] = []  # the `writing` blocks' temporaries, folders made


def abandon_writes() -> None:
    """Removes the local temporaries of the `writing` blocks under way, for a process that ends at
    once (`cli.exit_at_once`): what it was writing is then absent, not left half-written beside its
    target. A bucket's stay (a request could outlast the exit; the trainer removes its own in its
    workdir when it next runs there)."""
    for temporaries, made in list(_under_way):
        for temporary in (t for t in temporaries if not is_url(t)):
            for _ in range(2):  # a writer thread may still be adding files
                if os.path.isdir(temporary):
                    shutil.rmtree(temporary, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary)
        _remove_made(made)


def _remove_made(made: set[epath.Path]) -> None:
    """Removes the folders a write made for its outputs, deepest first, where they are empty."""
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


def _remove(path: epath.Path) -> None:
    """Deletes the file or folder `path`, if there is one."""
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


@dataclasses.dataclass(frozen=True)
class Output:
    """A file (or, if `folder`, a folder) a tool writes, whole or not at all: `what` is how the
    command line named it ('--output'; empty for an argument, whose path says enough); `ours` tells
    whether a folder that is not empty is the tool's own earlier output, which it replaces whole."""

    path: epath.Path
    what: str = ""
    folder: bool = False
    ours: Callable[[epath.Path], bool] | None = None

    def taken(self) -> bool:
        """Whether the path is a folder that is not empty and not ours to replace."""
        return (self.folder and self.path.is_dir() and any(self.path.iterdir())
                and not (self.ours and self.ours(self.path)))

    def named(self, problem: str) -> OutputError:
        return OutputError(f"{self.what + ' ' if self.what else ''}{self.path}: {problem}")


def output(path: epath.PathLike, what: str = "", folder: bool = False,
           ours: Callable[[epath.Path], bool] | None = None) -> Output:
    """An `Output` of `path`, made absolute (a URL stays as it is)."""
    path = epath.Path(path)
    return Output(path if is_url(path) else path.absolute(), what, folder, ours)


def check_outputs(outputs: Sequence[Output], size: int = 0) -> None:
    """Raises OutputError naming the first of `outputs` that cannot be written, before any work: a
    file where a folder is wanted or the other way round, a path beneath a file, a folder that cannot
    be written (read-only, or no permission), a folder output that exists and is not empty (and not
    `ours`); and, on a local disk, less free space than `size` bytes (all outputs together) with a
    margin."""
    for out in outputs:
        if is_url(out.path):
            check_url(os.fspath(out.path), out.what or "output")
            if out.taken():
                raise out.named("exists and is not empty; choose a new directory")
            continue
        existing = next(p for p in (out.path, *out.path.parents) if p.exists())  # the root exists
        if existing == out.path:
            if out.folder and not existing.is_dir():
                raise out.named("is a file, not a directory")
            if not out.folder and existing.is_dir():
                raise out.named("is a directory, not a file")
            existing = out.path.parent
        if not existing.is_dir():
            raise out.named(f"lies beneath the file {existing}, not in a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise out.named(f"cannot be written: {existing} is read-only (a read-only file system or no write "
                            "permission)")
        if out.taken():
            raise out.named("exists and is not empty; choose a new directory")
    for out in outputs:
        if (free := free_bytes(out.path)) is not None and free < with_margin(size):
            raise out.named(f"no space left on device (the output needs {megabytes(with_margin(size))}; "
                            f"{megabytes(free)} free)")


@contextlib.contextmanager
def writing(outputs: Sequence[Output], size: int = 0) -> Iterator[list[epath.Path]]:
    """Checks `outputs` (`check_outputs`), then yields a temporary sibling of each to write (a folder
    made for a folder output) and moves each that the block wrote into place when it ends. On any
    error in the block (or Ctrl-C) it deletes the siblings (a folder once its files stop changing:
    `settled`) and the folders it made for them, leaving the targets as they were; it raises an
    OSError (a full disk, a lost bucket) as OutputError naming the output, and a ManetError with
    the outputs' own paths in its message."""
    check_outputs(outputs, size)
    made = {p for out in outputs if not is_url(out.path) for p in out.path.parents if not p.exists()}
    temporaries = [temporary_sibling(out.path) for out in outputs]
    _under_way.append(under_way := (temporaries, made))
    try:
        for out, temporary in zip(outputs, temporaries):
            if not is_url(temporary):
                temporary.parent.mkdir(parents=True, exist_ok=True)
                if out.folder:
                    temporary.mkdir()
        yield temporaries
        for out, temporary in zip(outputs, temporaries):
            if not temporary.exists():  # the work wrote nothing there (a video without frames)
                continue
            if out.folder and out.path.is_dir():  # empty, or ours (checked): replaced whole
                earlier = out.path.rename(temporary_sibling(out.path))
                temporary.replace(out.path)
                _remove(earlier)
            else:
                temporary.replace(out.path)
    except BaseException as e:
        for temporary in temporaries:
            if not is_url(temporary) and temporary.is_dir():
                settled(temporary)  # writes a failed writer abandoned (Orbax's) end before it is removed
            with contextlib.suppress(OSError):
                _remove(temporary)
        _remove_made(made)
        if isinstance(e, OSError) and not isinstance(e, ManetError) or is_disk_full(e):
            out = next((o for o, t in zip(outputs, temporaries) if os.fspath(t) in str(e)), outputs[0])
            raise out.named(f"cannot be written ({write_problem(e, out.path)}); nothing was written") from e
        if isinstance(e, ManetError):  # its message names the output the user gave, not its sibling
            message = str(e)
            for out, temporary in zip(outputs, temporaries):
                message = message.replace(os.fspath(temporary), os.fspath(out.path))
            e.args = (message,)
        raise
    finally:
        _under_way.remove(under_way)


def write_problem(error: BaseException, path: epath.Path) -> str:
    """What stopped a write to `path`, in words: a full disk (with the space free now), else the OS's."""
    if is_disk_full(error):
        free = free_bytes(path)
        return "no space left on device" + ("" if free is None else f"; {megabytes(free)} free now")
    return getattr(error, "strerror", None) or str(error).strip().splitlines()[0]


def settled(directory: epath.Path, interval: float = 0.5, timeout: float = 120) -> None:
    """Returns once the files under a local `directory` have stopped changing for `interval` seconds
    (or after `timeout`): the writes Orbax abandoned after a failed one are done. Orbax has no public
    way to wait for them."""
    def snapshot() -> list[tuple[str, int]]:
        files = []
        for root, _, names in os.walk(directory):
            for name in names:
                try:
                    files.append((os.path.join(root, name), os.stat(os.path.join(root, name)).st_size))
                except OSError:  # removed meanwhile
                    pass
        return sorted(files)

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        current = snapshot()
        if current == last:
            return
        last = current
        time.sleep(interval)


def free_bytes(path: epath.PathLike) -> int | None:
    """Free bytes on the disk of `path` or its nearest existing parent (None for a bucket)."""
    path = epath.Path(path)
    if is_url(path):
        return None
    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free


def with_margin(size: int) -> int:
    """The room a write of `size` bytes needs (MARGIN_FACTOR, MARGIN_BYTES)."""
    return int(size * MARGIN_FACTOR) + MARGIN_BYTES


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def append_text(path: epath.PathLike, text: str) -> None:
    """Appends `text` to the file `path` (created if missing). Objects in a bucket cannot be
    appended to: the object is rewritten whole, by one upload."""
    path = epath.Path(path)
    if is_url(path):
        path.write_text((path.read_text() if path.exists() else "") + text)
        return
    with path.open("a") as f:
        f.write(text)


# The conditional writes of a bucket's objects (google-cloud-storage): a generation is an
# object's version number, 0 for "no object".

def read_object(url: str) -> tuple[str, int] | None:
    """(text, generation) of the object `url`; None if there is none."""
    from google.api_core import exceptions

    bucket, name = bucket_and_name(url)
    blob = client().bucket(bucket).blob(name)
    try:
        return blob.download_as_text(), blob.generation
    except exceptions.NotFound:
        return None


def write_object_if(url: str, text: str, generation: int) -> int | None:
    """Writes `text` to the object `url` if its generation is `generation` (0: if there is no
    object), atomically; the new generation, or None if the object had another generation."""
    from google.api_core import exceptions

    bucket, name = bucket_and_name(url)
    blob = client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(text, content_type="application/json", if_generation_match=generation)
    except exceptions.PreconditionFailed:
        return None
    return blob.generation


def delete_object_if(url: str, generation: int) -> None:
    """Deletes the object `url` if its generation is still `generation` (gone already is fine)."""
    from google.api_core import exceptions

    bucket, name = bucket_and_name(url)
    try:
        client().bucket(bucket).blob(name).delete(if_generation_match=generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
        pass
