"""Outputs whole or absent (`storage.writing`): the target checked before the work, a temporary
sibling moved into place, what was written removed on any failure; on real full, inode-less and
read-only disks (tmpfs, so as root; skipped otherwise)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from manet_jax import storage
from manet_jax.bundle import ModelSpec, default_class_names, load_bundle, save_bundle
from manet_jax.errors import ManetError
from manet_jax.storage import OutputError
from train_helpers import tmpfs


def test_an_output_is_moved_into_place_whole_and_replaces_a_file(tmp_path):
    (tmp_path / "out.json").write_text("old")
    outputs = [storage.output(tmp_path / "out.json", "--output"), storage.output(tmp_path / "new/pngs", folder=True)]
    with storage.writing(outputs) as (file, folder):
        file.write_text("new")
        (folder / "a.png").write_bytes(b"png")
        assert not (tmp_path / "new" / "pngs").exists() and (tmp_path / "out.json").read_text() == "old"
    assert (tmp_path / "out.json").read_text() == "new" and (tmp_path / "new/pngs/a.png").read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out.json"]  # no temporary left


def test_a_folder_of_ours_is_replaced_whole(tmp_path):
    (tmp_path / "vis").mkdir()
    (tmp_path / "vis" / "old.png").write_bytes(b"old")
    with storage.writing([storage.output(tmp_path / "vis", folder=True, ours=lambda folder: True)]) as (folder,):
        (folder / "new.png").write_bytes(b"new")
    assert [p.name for p in (tmp_path / "vis").iterdir()] == ["new.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["vis"]


def test_unusable_targets_are_named_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("notes")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder/keep.txt").write_text("keep")
    cases = [(tmp_path / "file", True, "is a file, not a directory"),
             (tmp_path / "folder", False, "is a directory, not a file"),
             (tmp_path / "file/out", True, f"lies beneath the file {tmp_path / 'file'}, not in a directory"),
             (tmp_path / "folder", True, "exists and is not empty; choose a new directory")]
    for path, folder, problem in cases:
        with pytest.raises(OutputError) as error:
            with storage.writing([storage.output(path, "--out", folder)]):
                pytest.fail("the work ran")
        assert str(error.value) == f"--out {path}: {problem}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert (tmp_path / "file").read_text() == "notes" and [p.name for p in (tmp_path / "folder").iterdir()] == [
        "keep.txt"]


def test_a_read_only_disk_is_named(tmp_path):
    with tmpfs(tmp_path / "disk", "ro,size=1m") as disk:
        with pytest.raises(OutputError, match=rf"^{disk}/a/b: cannot be written: {disk} is read-only \(a read-only "
                                              r"file system or no write permission\)$"):
            storage.check_outputs([storage.output(disk / "a" / "b", folder=True)])


def test_a_disk_that_fills_while_writing_keeps_nothing(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        with pytest.raises(OutputError, match=rf"^--output {disk}/new/out.bin: cannot be written \(no space left on "
                                              r"device; \d MB free now\); nothing was written$"):
            with storage.writing([storage.output(disk / "new" / "out.bin", "--output")]) as (temporary,):
                temporary.write_bytes(bytes(2_000_000))  # more than the disk holds, which the check did not know
        assert list(disk.iterdir()) == []  # the temporary file and the folder made for it removed
        with pytest.raises(OutputError, match=rf"^{disk}/out: no space left on device \(the output needs 3 MB; 1 MB "
                                              r"free\)$"):
            storage.check_outputs([storage.output(disk / "out")], 2_000_000)


def small_variables() -> dict:
    rng = np.random.default_rng(0)
    return {"params": {"w": rng.random((64, 64), np.float32)}, "batch_stats": {"mean": rng.random(64, np.float32)}}


def test_a_bundle_is_saved_whole_or_not_at_all_and_no_writer_thread_lives_on(tmp_path, caplog):
    spec = ModelSpec(default_class_names(7), image_size=64)
    save_bundle(tmp_path / "model", small_variables(), spec)
    assert load_bundle(tmp_path / "model").spec == spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    threads = set(threading.enumerate())
    # Room for the arrays but not for the files Orbax makes: its write fails half-way (main's
    # asynchronous checkpointer hung the converter when its writer thread failed).
    with tmpfs(tmp_path / "disk", "size=4m,nr_inodes=8") as disk:
        start = time.monotonic()
        with pytest.raises(OutputError, match=rf"^{disk}/model: cannot be written \(no space left on device; \d MB "
                                              r"free now\); nothing was written$"):
            save_bundle(disk / "model", small_variables(), spec)
        assert time.monotonic() - start < 30
        assert list(disk.iterdir()) == []
    assert {t for t in threading.enumerate() if not t.daemon} <= threads
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []  # Orbax's, asyncio's


def test_an_error_of_the_work_names_the_output_and_an_output_left_unwritten_is_left_alone(tmp_path):
    outputs = [storage.output(tmp_path / "annotated.mp4", "--annotate"), storage.output(tmp_path / "out.json")]
    with pytest.raises(ManetError, match=rf"^--annotate {tmp_path / 'annotated.mp4'}: OpenCV cannot write this"):
        with storage.writing(outputs) as (video, _):
            raise ManetError(f"--annotate {video}: OpenCV cannot write this video")
    with storage.writing(outputs) as (_, records):  # a video without frames: no video written
        records.write_text("[]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
