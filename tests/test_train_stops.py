"""The trainer stopped by what goes wrong during a run: a diverging loss, a full disk, Ctrl-C (CPU, 64x64,
the tiny dataset of test_train; a module of its own so that pytest-xdist can run it beside test_train)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import pytest

from manet_jax.bundle import load_bundle
from manet_jax.training.run import PreemptionGuard
from train_helpers import (STEPS_PER_EPOCH, command, random_variables, run, run_and_signal, run_timing_exit, tmpfs,
                           trainer_setup)

pytestmark = pytest.mark.slow  # each test runs the trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache) -> dict:
    return trainer_setup(tmp_path_factory.mktemp("train_stops"), compilation_cache)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(setup):
    workdir = setup["root"] / "diverging"
    # The learning rate becomes 1e28 in epoch 2 (StepLR with gamma = 1e30 after 1 epoch).
    result = run(command(setup, workdir, "--config.lr_step_epochs=1", "--config.lr_gamma=1e30"), setup["env"])
    assert result.returncode == 2
    match = re.search(r"error: the training loss is (nan|inf|-inf) at step (\d+)", result.stderr)
    assert match, result.stderr[-3000:]
    assert STEPS_PER_EPOCH < int(match.group(2)) <= 2 * STEPS_PER_EPOCH  # in epoch 2 (measured: step 7)
    assert "the last checkpoint, step 4" in result.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]


def checkpoint_bytes() -> int:
    """The size of a checkpoint of the test runs: variables and SGD's momentum (one per parameter)."""
    variables = random_variables()
    return sum(x.nbytes for x in jax.tree.leaves((variables, variables["params"])))


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A tmpfs that holds one checkpoint of the test runs but not two."""
    with tmpfs(tmp_path / "disk", f"size={int(1.3 * checkpoint_bytes())}") as disk:
        yield disk


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A tmpfs of 32 KB: no room for a checkpoint."""
    with tmpfs(tmp_path / "disk", "size=32k") as disk:
        yield disk


def test_a_full_disk_stops_the_run_when_the_save_fails_in_one_line(setup, small_disk):
    workdir, size = small_disk / "workdir", f"{checkpoint_bytes() / 1e6:,.0f} MB"
    result = run(command(setup, workdir), setup["env"])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    checkpoints = re.escape(str(workdir / "checkpoints"))
    assert re.fullmatch(rf"error: checkpoint 8 could not be written to {checkpoints}: no space left on device "
                        rf"\(a checkpoint needs {size}; \d+ MB free now\); the last complete checkpoint is "
                        rf"{checkpoints}/4: run the same command to resume from it once the cause is fixed",
                        lines[-1]), lines[-1]
    assert f"less than two checkpoints ({size} each)" in result.stderr  # warned before the first save
    assert "step 12/12" not in result.stderr  # stopped when the save failed, not at the next one
    assert len(lines) < 30  # no tracebacks from Orbax's threads
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]  # the unfinished write removed
    assert load_bundle(workdir / "checkpoints" / "4").step == 4


def test_a_disk_without_room_for_a_checkpoint_stops_the_run_before_it_starts(setup, tiny_disk):
    workdir, size = tiny_disk / "workdir", f"{checkpoint_bytes() / 1e6:,.0f} MB"
    result = run(command(setup, workdir), setup["env"])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines[-1] == (f"error: checkpoints cannot be written to {workdir / 'checkpoints'}: no space left on "
                         f"device (a checkpoint needs {size}; 0 MB free now); no checkpoint was saved: run the same "
                         "command to start again once the cause is fixed"), lines[-1]
    assert "step 1/12" not in result.stderr and len(lines) < 10
    assert list(tiny_disk.iterdir()) == []  # nothing written, not even the workdir


def fill(disk: Path) -> None:
    """Fills `disk` with a file of zeros."""
    with open(disk / "ballast", "wb", buffering=0) as ballast:
        try:
            while True:
                ballast.write(bytes(1 << 16))
        except OSError:
            pass


def test_a_full_disk_stops_the_run_at_any_write_in_one_line(setup, small_disk):
    """Another program fills the disk after step 2: the metrics of the first evaluation (TensorBoard's
    figures, summary.json) find no room."""
    workdir = small_disk / "workdir"
    filled = []

    def fill_after_step_2(line: str, process) -> None:
        if "step 2/12" in line and not filled:
            fill(small_disk)
            filled.append(line)

    code, output, _ = run_timing_exit(command(setup, workdir, "--config.checkpoint_every_epochs=3"), setup["env"],
                                      on_line=fill_after_step_2)
    assert code == 2, output[-3000:]
    lines = output.splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(workdir))}\S* could not be written: no space left on device "
                        r"\(0 MB free now\); no checkpoint was saved: run the same command to start again once "
                        "the cause is fixed", lines[-1]), lines[-1]
    assert filled and "step 5/12" not in output
    assert len(lines) < 30
    assert not (workdir / "summary.json").exists()  # not left empty: written whole or not at all


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(setup):
    """The first SIGINT is a preemption (a checkpoint at the current step) that exits with 130."""
    workdir = setup["root"] / "ctrl_c"
    code, output = run_and_signal(command(setup, workdir), setup["env"], lambda line: "step 2/12" in line,
                                  signal.SIGINT)
    assert code == 130, output[-3000:]
    match = re.search(r"interrupted \(Ctrl-C\) at step (\d+): checkpoint saved in (\S+); run the same command to "
                      r"resume\n", output)
    assert match, output[-3000:]
    assert match.group(2) == str(workdir / "checkpoints")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [match.group(1)]
    assert load_bundle(workdir / "checkpoints" / match.group(1)).step == int(match.group(1))
    assert "Traceback" not in output and not (workdir / "lease.json").exists()


def test_a_second_ctrl_c_stops_at_once():
    with PreemptionGuard() as guard:
        assert not guard.reached(1)
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # else the kill stops pytest
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.reached(1) and guard.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # Python's own handler, put back by the first
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs in the main thread at the next instruction
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
