"""Data parallelism: the trainer on 2 processes x 2 devices against the same steps on one device.

CPU devices are faked (JAX_NUM_CPU_DEVICES); the two processes talk through a local
jax.distributed coordinator and gloo, and shard each batch over the mesh of all 4 devices (2 in
each process), so one run covers sharding within and across processes. The run has one step an
epoch (8 training images, batch 8), so its first checkpoint holds the first update. Float32
tolerance for MA-Net: the first loss agrees to round-off and the first update to 1e-3 (relative
L2), but MA-Net's max operations (max pooling, CBAM) send gradients to one of several near-equal
values, so reduction-order round-off changes a few gradient entries outright; later losses drift
apart by about 1e-4..1e-2 (with float64 compute the gradients on 1 and 8 devices agree to 1e-10).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from manet_jax.bundle import load_bundle
from gcs_emulator import download, upload
from train_helpers import REPO, command, environment, flat_params, run, trainer_setup

pytestmark = pytest.mark.slow  # two trainer processes and the one-device steps in a third

DATASET = "synthetic_faces/64_8_20"  # one step of 8 an epoch
# The learning rate's decay at step 8, as in test_train's runs: the one-device steps are then the
# program those runs left in the compilation cache.
OVERRIDES = [f"--config.dataset={DATASET}", "--config.num_epochs=2", "--config.lr_step_epochs=8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache) -> dict:
    return {**trainer_setup(tmp_path_factory.mktemp("parallel"), compilation_cache), "cache": compilation_cache}


@pytest.fixture(scope="module")
def one_device(setup) -> dict:
    """The run's two steps on one device: {'losses', 'params'} (flat_params after the first)."""
    output = setup["root"] / "one_device.npy"
    code = (f"import json, train_helpers; print(json.dumps(train_helpers.one_device_steps("
            f"{str(setup['data_dir'])!r}, {str(setup['init_from'])!r}, {OVERRIDES!r}, 2, {str(output)!r})))")
    result = run([sys.executable, "-c", code], {**environment(setup["cache"]), "PYTHONPATH": str(REPO / "tests")})
    assert result.returncode == 0, result.stderr[-3000:]
    return {"losses": json.loads(result.stdout.splitlines()[-1]), "params": np.load(output)}


def test_two_processes_of_two_devices_match_one_device(setup, one_device, emulator, tmp_path):
    """As on a pod slice: the workdir, and the model it starts from, in a gs:// bucket. (The run on a
    local disk takes the same path but for the storage layer, which tests/test_train.py and
    tests/test_gcs.py cover; a second multi-process run would cost the suite four minutes.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Without the persistent compilation cache: only process 0 writes it, and on CPU the two processes'
    # keys differ, so a warm cache would let process 0 start its first collective while process 1
    # still compiles, past gloo's 30 s to connect.
    bucket = emulator.new_bucket()
    workdir = f"gs://{bucket}/run"
    env = {**environment(setup["cache"], num_devices=2), "JAX_ENABLE_COMPILATION_CACHE": "false",
           **emulator.environment()}
    overrides = [*OVERRIDES, f"--config.init_from={upload(setup['init_from'], f'gs://{bucket}/init')}"]
    processes = [subprocess.Popen(
        command(setup, workdir, *overrides, f"--coordinator-address=127.0.0.1:{port}", "--num-processes=2",
                f"--process-id={i}"),
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        errors = [p.communicate(timeout=600)[1] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    assert "on 4 device(s) in 2 process(es)" in errors[0]
    assert f"initialised from gs://{bucket}/init" in errors[0]
    local = download(workdir, tmp_path / "run")
    records = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train"]["loss"] for r in records if "train" in r]
    assert len(losses) == 2  # written once, by process 0
    assert np.all(np.isfinite(one_device["losses"]))
    np.testing.assert_allclose(losses[0], one_device["losses"][0], rtol=1e-6)
    np.testing.assert_allclose(losses[1], one_device["losses"][1], rtol=1e-2)
    initial = flat_params(load_bundle(setup["init_from"]).variables)
    update = flat_params(load_bundle(local / "checkpoints" / "1").variables) - initial
    expected = one_device["params"] - initial
    assert np.linalg.norm(update - expected) / np.linalg.norm(expected) < 1e-3
    assert [r["eval"][f"{DATASET}/test"]["fused"]["count"] for r in records if "eval" in r] == [20, 20]
