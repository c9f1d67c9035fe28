"""Data parallelism: the same run on 1 and 8 devices, and on 2 processes x 2 devices.

CPU devices are faked (JAX_NUM_CPU_DEVICES); the two processes talk through a local
jax.distributed coordinator and gloo. Float32 tolerance for MA-Net: the first loss agrees to
round-off and the first update to 1e-3 (relative L2), but MA-Net's max operations (max pooling,
CBAM) send gradients to one of several near-equal values, so reduction-order round-off changes a
few gradient entries outright; later losses drift apart by about 1e-4..1e-2 (with float64 compute
the gradients on 1 and 8 devices agree to 1e-10).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from train_helpers import DATASET, REPO, STEPS_PER_EPOCH, command, environment, run, trainer_setup

STEPS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache) -> dict:
    return {**trainer_setup(tmp_path_factory.mktemp("parallel"), compilation_cache), "cache": compilation_cache}


@pytest.fixture(scope="module")
def mesh_runs(setup) -> dict[int, dict]:
    """The first steps on meshes of 1 and 8 devices of one process."""
    code = (f"import json, train_helpers; print(json.dumps(train_helpers.mesh_runs("
            f"{str(setup['data_dir'])!r}, {str(setup['init_from'])!r}, [1, 8], {STEPS})))")
    env = {**environment(setup["cache"], num_devices=8), "PYTHONPATH": str(REPO / "tests")}
    result = run([sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {int(n): r for n, r in json.loads(result.stdout.splitlines()[-1]).items()}


def assert_same_losses(losses: list[float], expected: list[float]) -> None:
    np.testing.assert_allclose(losses[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(losses[1:], expected[1:], rtol=1e-2)


def test_one_and_eight_devices_give_the_same_run(mesh_runs):
    assert np.all(np.isfinite(mesh_runs[1]["losses"]))
    assert_same_losses(mesh_runs[8]["losses"], mesh_runs[1]["losses"])
    assert mesh_runs[8]["update_error"] < 1e-2


def test_two_processes_match_one_process(setup, mesh_runs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = setup["root"] / "multiprocess"
    processes = [subprocess.Popen(
        command(setup, workdir, "--config.num_epochs=1", f"--coordinator-address=127.0.0.1:{port}",
                "--num-processes=2", f"--process-id={i}"),
        env=environment(setup["cache"], num_devices=2), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errors = [p.communicate(timeout=600)[1] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    assert "on 4 device(s) in 2 process(es)" in errors[0]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train"]["loss"] for r in records if "train" in r]
    assert len(losses) == STEPS_PER_EPOCH  # written once, by process 0
    assert_same_losses(losses[:STEPS], mesh_runs[1]["losses"])
    assert [r["eval"][f"{DATASET}/test"]["fused"]["count"] for r in records if "eval" in r] == [20]
    assert (workdir / "checkpoints" / str(STEPS_PER_EPOCH)).is_dir()
