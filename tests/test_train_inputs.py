"""The trainer refuses inputs it cannot use, in one `error:` line and before it writes anything:
a workdir that is empty, a file, read-only or someone else's directory, a data_dir it cannot use,
an init_from that is not a model. In process: each error comes before any JAX work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from manet_jax.convert import CheckpointFileError, load_state_dict_file
from manet_jax.errors import ConfigError
from manet_jax.train import main
from manet_jax.training.config import load_config
from manet_jax.training.run import train_and_evaluate
from train_helpers import REPO, make_dataset, tmpfs, train_command

BAD_DATASET = "--config.dataset=faces"  # an error the run would meet after the workdir checks


def refused(capsys, workdir: str, *overrides: str) -> str:
    """The error line of `python -m manet_jax.train` on `workdir`, which must exit with status 2."""
    code = main(["--config", str(REPO / "configs/demo.py"), "--workdir", workdir, BAD_DATASET, *overrides])
    lines = capsys.readouterr().err.splitlines()
    assert (code, len(lines)) == (2, 1), lines
    return lines[0]


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
    with tmpfs(tmp_path / "disk", "ro,size=1m") as disk:
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
    with tmpfs(tmp_path / "disk", "ro,size=1m") as disk:
        assert refused(capsys, str(tmp_path / "c"), dataset, f"--config.data_dir={disk}") == (
            f"error: data dir {disk} cannot be written: {disk} is read-only (a read-only file system or no write "
            f"permission); give a directory where this user can write {where}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt", "disk"]  # no workdir


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    make_dataset(data_dir)
    return data_dir


def test_an_init_from_that_is_no_model_is_refused_before_the_workdir_is_made(tiny_data, tmp_path):
    text_npz, text_pth, folder = tmp_path / "weights.npz", tmp_path / "weights.pth", tmp_path / "folder"
    text_npz.write_text("not weights")
    text_pth.write_text("not weights")
    folder.mkdir()
    (folder / "notes.txt").write_text("notes")
    cases = {
        text_npz: f"config.init_from: {text_npz}: not a readable .npz file: it is not a NumPy .npz archive (a zip of "
                  ".npy arrays, as numpy.savez writes)",
        text_pth: f"config.init_from: {text_pth}: not a PyTorch checkpoint (neither the zip archive torch.save writes "
                  "nor its older pickle format)",
        folder: f"config.init_from: {folder} is a directory but not a manet-jax model (a bundle with variables/ and "
                "header/manet.json, a trainer checkpoint, or a trainer workdir with checkpoints/)",
        tmp_path / "missing.npz": f"config.init_from: {tmp_path / 'missing.npz'} does not exist. Give a weight file",
    }
    for init_from, message in cases.items():
        workdir = tmp_path / "workdir"
        overrides = [arg.removeprefix("--config.") for arg in train_command(workdir, tiny_data, init_from)
                     if arg.startswith("--config.")]
        with pytest.raises(ConfigError) as error:
            train_and_evaluate(load_config(str(REPO / "configs/demo.py"), overrides), str(workdir))
        assert str(error.value).startswith(message), init_from
        assert not workdir.exists(), init_from
    with pytest.raises(CheckpointFileError, match=re.escape(cases[text_npz].removeprefix("config.init_from: "))):
        load_state_dict_file(text_npz)  # as convert and compare read it
