"""The trainer refuses inputs it cannot use, in one `error:` line and before it writes anything:
a workdir that is empty, a file, read-only or someone else's directory, a data_dir it cannot use,
an init_from that is not a model. In process: each error comes before any JAX work."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from manet_jax.train import main
from train_helpers import REPO

BAD_DATASET = "--config.dataset=faces"  # an error the run would meet after the workdir checks


def refused(capsys, workdir: str, *overrides: str) -> str:
    """The error line of `python -m manet_jax.train` on `workdir`, which must exit with status 2."""
    code = main(["--config", str(REPO / "configs/demo.py"), "--workdir", workdir, BAD_DATASET, *overrides])
    lines = capsys.readouterr().err.splitlines()
    assert (code, len(lines)) == (2, 1), lines
    return lines[0]


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """`directory`, an empty read-only tmpfs for the `with` block (a test skip unless run as root:
    as root, permission bits do not stop writes, a read-only file system does)."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(directory)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"a read-only file system needs a tmpfs mounted as root: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_an_empty_workdir_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where it trained before: the current directory
    assert refused(capsys, "") == ("error: --workdir is empty (an unset variable?): give the run a directory of its "
                                   "own, e.g. --workdir runs/demo")
    assert list(tmp_path.iterdir()) == []


def test_the_current_directory_and_a_directory_of_other_files_are_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert refused(capsys, ".") == ("error: --workdir . is the current directory; a run writes checkpoints and logs "
                                    "into a directory of its own: give a new one, e.g. --workdir runs/demo")
    assert refused(capsys, str(REPO)).startswith(f"error: --workdir {REPO} holds other files (")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("setup.cfg", "README.md", "manet_jax", "tests"):
        (checkout / name).touch()
    assert refused(capsys, str(checkout)) == (
        f"error: --workdir {checkout} holds other files (README.md, manet_jax, setup.cfg, ...) and none of a "
        "trainer's: a run writes checkpoints and logs into a directory of its own: give a new or empty one, "
        "e.g. --workdir runs/demo")
    assert sorted(p.name for p in checkout.iterdir()) == ["README.md", "manet_jax", "setup.cfg", "tests"]


def test_a_file_and_a_path_beneath_a_file_are_refused(capsys, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("notes")
    assert refused(capsys, str(file)) == (f"error: --workdir {file} is a file, not a directory: give the run a "
                                          "directory of its own")
    assert refused(capsys, str(file / "run" / "1")) == (
        f"error: --workdir {file / 'run' / '1'} lies beneath the file {file}, not a directory: give the run a "
        "directory of its own")
    assert file.read_text() == "notes"


def test_a_read_only_workdir_is_named(capsys, tmp_path):
    with read_only(tmp_path / "disk") as disk:
        assert refused(capsys, str(disk / "run")) == (
            f"error: --workdir {disk / 'run'} cannot be written: {disk} is read-only (a read-only file system or no "
            "write permission); give a workdir where this user can write")


def test_new_empty_and_trainer_workdirs_pass_to_the_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.json").write_text("{}")
    for workdir in ("new/run", "empty", "used", str(tmp_path / "used")):
        assert refused(capsys, workdir).startswith("error: unknown dataset 'faces'"), workdir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "used"]


def test_a_data_dir_that_is_a_file_or_read_only_is_named(capsys, tmp_path):
    dataset = "--config.dataset=synthetic_faces/64_32_20"  # generated on first use: written to the data dir
    file = tmp_path / "data.txt"
    file.write_text("data")
    where = "(config.data_dir, a tool's --data-dir or $MANET_DATA_DIR)"
    assert refused(capsys, str(tmp_path / "a"), dataset, f"--config.data_dir={file}") == (
        f"error: data dir {file} is a file, not a directory; give a directory {where}")
    assert refused(capsys, str(tmp_path / "b"), dataset, f"--config.data_dir={file}/tfds") == (
        f"error: data dir {file}/tfds lies beneath the file {file}, not a directory; give a directory {where}")
    with read_only(tmp_path / "disk") as disk:
        assert refused(capsys, str(tmp_path / "c"), dataset, f"--config.data_dir={disk}") == (
            f"error: data dir {disk} cannot be written: {disk} is read-only (a read-only file system or no write "
            f"permission); give a directory where this user can write {where}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt", "disk"]  # no workdir
