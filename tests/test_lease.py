"""The workdir lease: one trainer per workdir, stale leases taken over, a lost lease noticed by
each of the trainer's writers before it writes.

Two trainers on one workdir as real processes: tests/test_train.py (the second trainer started on
the reference run's workdir; a killed run's lease taken over on resume).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time

import jax
import numpy as np
import pytest
from matplotlib.figure import Figure

from manet_jax.bundle import ModelSpec
from manet_jax.training import workdir as lease_module
from manet_jax.training.checkpoints import Checkpoints
from manet_jax.training.record import MetricWriter, RunSummary
from manet_jax.training.steps import TrainState
from manet_jax.training.workdir import LEASE_FILE, STALE_SECONDS, Holder, Lease, LeaseLostError, WorkdirBusyError, hold


def write_lease(workdir, **changes) -> Holder:
    """A lease file of this process with `changes` (another pid, host, refresh time, ...)."""
    holder = dataclasses.replace(Holder.this_process(), **changes)
    (workdir / LEASE_FILE).write_text(json.dumps(dataclasses.asdict(holder)))
    return holder


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_holder_is_named_and_the_lease_released(tmp_path):
    workdir = tmp_path / "new" / "workdir"
    with hold(workdir) as lease:
        holder = json.loads((workdir / LEASE_FILE).read_text())
        assert (holder["pid"], holder["host"]) == (os.getpid(), lease.holder.host)
        with pytest.raises(WorkdirBusyError, match=f"^{workdir} is in use by another trainer \\(pid {os.getpid()} on "):
            Lease.acquire(workdir)  # the holder runs: a second trainer in this very process
        lease.check()
    assert not (workdir / LEASE_FILE).exists()


@pytest.mark.parametrize("gone", ["dead pid", "reused pid", "damaged file", "other machine, stale"])
def test_a_lease_whose_holder_is_gone_is_taken_over_with_a_warning(tmp_path, caplog, gone):
    if gone == "dead pid":
        write_lease(tmp_path, pid=dead_pid())
    elif gone == "reused pid":  # this process's pid, but a process that started at another time
        write_lease(tmp_path, process="1")
    elif gone == "damaged file":
        (tmp_path / LEASE_FILE).write_text('{"host": "vm", "pid": 12')
    else:
        write_lease(tmp_path, host="elsewhere", refreshed=time.time() - STALE_SECONDS - 1)
    lease = Lease.acquire(tmp_path)
    assert f"taking over the lease {tmp_path / LEASE_FILE} of a trainer that is gone" in caplog.text
    assert lease.read() == lease.holder
    lease.release()


def test_a_lease_refreshed_on_another_machine_is_respected(tmp_path):
    write_lease(tmp_path, host="elsewhere", pid=dead_pid(), refreshed=time.time() - STALE_SECONDS + 60)
    with pytest.raises(WorkdirBusyError, match=r"in use by another trainer \(pid \d+ on elsewhere"):
        Lease.acquire(tmp_path)


def test_a_lost_lease_stops_the_next_write_and_is_left_to_its_new_holder(tmp_path):
    lease = Lease.acquire(tmp_path)
    other = write_lease(tmp_path, host="elsewhere")  # e.g. taken over while this one was suspended
    with pytest.raises(LeaseLostError, match="lost the lease .* now held by pid .* on elsewhere"):
        lease.check()
    lease.release()
    assert lease.read() == other


def test_a_lost_lease_stops_each_writer_of_the_workdir_before_it_writes(tmp_path):
    lease = Lease.acquire(tmp_path)
    writer = MetricWriter(tmp_path, lease=lease)
    summary = RunSummary("set/test", tmp_path / "summary.json", lease=lease)
    checkpoints = Checkpoints(tmp_path / "checkpoints", lease=lease)
    state = jax.device_put(TrainState(step=np.int32(1), params={"w": np.arange(3.0, dtype=np.float32)},
                                      batch_stats={}, opt_state={}))
    writer.write({"step": 1, "train": {"loss": 0.5}})  # while it holds the lease
    summary.write()
    written = {name: (tmp_path / name).read_text() for name in ("metrics.jsonl", "summary.json")}
    write_lease(tmp_path, host="elsewhere")
    for write in (lambda: writer.truncate(0), lambda: writer.write({"step": 2, "train": {"loss": 0.25}}),
                  lambda: writer.write_figure("figure", Figure(), 2), summary.write,
                  lambda: checkpoints.save(2, state, ModelSpec(("a", "b")), summary.host_state())):
        with pytest.raises(LeaseLostError, match="now held by pid .* on elsewhere"):
            write()
    assert {name: (tmp_path / name).read_text() for name in written} == written
    assert checkpoints.latest_step() is None and not list((tmp_path / "checkpoints").glob("*"))
    checkpoints.close()
    writer.close()
    lease.release()


def test_the_holder_refreshes_its_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "REFRESH_SECONDS", 0.05)
    lease = Lease.acquire(tmp_path)
    first = lease.read().refreshed
    time.sleep(0.5)
    assert lease.read().refreshed > first and lease.read().token == lease.holder.token
    lease.release()


def test_without_hard_links_the_lease_is_written_after_a_check(tmp_path, monkeypatch):
    """As on a gs:// bucket, which has no atomic create."""
    def no_links(source, target):
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(lease_module.os, "link", no_links)
    lease = Lease.acquire(tmp_path)
    assert lease.read() == lease.holder
    with pytest.raises(WorkdirBusyError):
        Lease.acquire(tmp_path)
    lease.release()
    assert not (tmp_path / LEASE_FILE).exists()
