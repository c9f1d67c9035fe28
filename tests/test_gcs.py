"""Workdirs and models in Cloud Storage (`gs://`), against a real emulator (tests/gcs_emulator.py).

The tools run as on a TPU VM, only the endpoint differs: the same trainer on the tiny dataset of
test_train (3 epochs of 4 steps) with a `gs://` workdir, which must end bit-identical to a run
stopped by SIGTERM, resumed, killed by SIGKILL during a checkpoint write and resumed again, the
last run carried over a network outage during its last checkpoint's write; the reading tools on
the bucket's models; the lease raced by simultaneous starts; and a bucket that is missing,
misnamed or goes away. (Two processes writing one bucket: tests/test_train_parallel.py.)
"""

from __future__ import annotations

import json
import multiprocessing
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.util import event_pb2

from gcs_emulator import download
from manet_jax import storage
from manet_jax.bundle import load_bundle
from train_helpers import DATASET, REPO, command, run, run_and_signal, trainer_setup

TOTAL = 12  # train_helpers' runs: 3 epochs of 4 steps


@pytest.fixture
def bucket(emulator) -> str:
    return emulator.new_bucket()


def records(workdir: Path) -> list[dict]:
    """The metric records without their timings."""
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_second"}
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(workdir: Path) -> dict[str, dict[int, float]]:
    events: dict[str, dict[int, float]] = {}
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        for data in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(data.numpy())
            for value in event.summary.value:
                if value.tensor.dtype == tf.float32.as_datatype_enum and not value.tensor.tensor_shape.dim:
                    events.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return events


# The storage layer itself

def test_files_in_a_bucket_are_replaced_and_appended_whole(bucket):
    url = f"gs://{bucket}/run/metrics.jsonl"
    storage.append_text(url, "one\n")
    storage.append_text(url, "two\n")
    assert storage.read_object(url)[0] == "one\ntwo\n"  # read back by google-cloud-storage, not gcsfs
    storage.replace_text(url, "three\n")
    assert storage.read_object(url)[0] == "three\n"
    assert [p.name for p in storage_listing(bucket)] == ["metrics.jsonl"]  # no temporary objects


def test_outputs_in_a_bucket_are_moved_into_place_whole_or_not_at_all(bucket):
    from etils import epath

    report, model = f"gs://{bucket}/run/eval/metrics.json", f"gs://{bucket}/run/model"
    outputs = [storage.output(report, "--summary"), storage.output(model, folder=True)]
    with pytest.raises(KeyboardInterrupt):
        with storage.writing(outputs) as (file, folder):
            file.write_text("{}")
            (folder / "header.json").write_text("{}")
            raise KeyboardInterrupt
    assert not epath.Path(f"gs://{bucket}/run").exists()  # nothing left, temporary objects included
    with storage.writing(outputs) as (file, folder):
        file.write_text("{}")
        (folder / "header.json").write_text("{}")
    assert [p.name for p in storage_listing(bucket)] == ["eval", "model"]
    assert epath.Path(report).read_text() == epath.Path(f"{model}/header.json").read_text() == "{}"
    with pytest.raises(storage.OutputError, match=f"^{model}: exists and is not empty; choose a new directory$"):
        storage.check_outputs([outputs[1]])


def storage_listing(bucket: str) -> list:
    from etils import epath

    return list(epath.Path(f"gs://{bucket}/run").iterdir())


def test_conditional_writes_of_an_object(bucket):
    url = f"gs://{bucket}/lease.json"
    first = storage.write_object_if(url, "a", 0)
    assert first is not None and storage.write_object_if(url, "b", 0) is None  # exists: not created again
    second = storage.write_object_if(url, "c", first)
    assert second is not None and second != first and storage.read_object(url) == ("c", second)
    assert storage.write_object_if(url, "d", first) is None and storage.read_object(url)[0] == "c"  # stale
    storage.delete_object_if(url, second)
    assert storage.read_object(url) is None


@pytest.mark.parametrize("url, message", [
    ("gs://No_Such/run", r"--workdir gs://No_Such/run: 'No_Such' is not a Cloud Storage bucket name"),
    ("gs://ab/run", r"--workdir gs://ab/run: 'ab' is not a Cloud Storage bucket name"),
    ("s3://bucket/run", r"--workdir s3://bucket/run: s3:// is not supported; give a local path or a gs://"),
    ("gs://missing-bucket-7/run", r"--workdir gs://missing-bucket-7/run: the bucket gs://missing-bucket-7 does not "
                                  r"exist \(create it, or check the name\)"),
])
def test_a_malformed_url_or_a_missing_bucket_is_named(bucket, url, message):
    with pytest.raises(storage.StorageError, match=message):
        storage.check_bucket(url, "--workdir")


def test_gs_paths_need_gcsfs(bucket, monkeypatch):
    monkeypatch.delenv("EPATH_USE_TF")
    with pytest.raises(storage.StorageError, match="gs:// paths need EPATH_USE_TF=false"):
        storage.check_url(f"gs://{bucket}/run", "--workdir")


def test_a_gs_data_dir_is_refused_in_one_line():
    from manet_jax.data.errors import DataDirError
    from manet_jax.data.locations import check_data_dir

    with pytest.raises(DataDirError, match=r"data dir gs://b-1/data: datasets are read from a local disk, not a "
                                           r"bucket: copy the prepared dataset to each worker's disk"):
        check_data_dir("gs://b-1/data")


# The lease on a bucket: two trainers started at the same moment, one runs

def _race(workdirs: list[str], barrier, results, environment: dict[str, str]) -> None:
    """One contender: at each round's barrier, takes the lease of that round's workdir."""
    import os

    os.environ.update(environment)
    from manet_jax.training.workdir import Lease, WorkdirBusyError

    held = []
    for workdir in workdirs:
        barrier.wait()
        try:
            held.append(Lease.acquire(workdir))
            results.put((workdir, "held"))
        except WorkdirBusyError as e:
            results.put((workdir, str(e)))
    barrier.wait()  # every round decided: the winners let go
    for lease in held:
        lease.release()


ROUNDS = 20


def test_of_two_simultaneous_starts_on_a_bucket_exactly_one_takes_the_lease(bucket, emulator):
    workdirs = [f"gs://{bucket}/race/{i}" for i in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    environment = {**emulator.environment(), "EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                   "JAX_PLATFORMS": "cpu"}
    contenders = [context.Process(target=_race, args=(workdirs, barrier, results, environment)) for _ in range(2)]
    for process in contenders:
        process.start()
    outcomes: dict[str, list[str]] = {}
    for _ in range(2 * ROUNDS):
        workdir, outcome = results.get(timeout=120)
        outcomes.setdefault(workdir, []).append(outcome)
    for process in contenders:
        process.join(60)
    assert [p.exitcode for p in contenders] == [0, 0]
    for workdir in workdirs:
        held, (refused,) = [o for o in outcomes[workdir] if o == "held"], [o for o in outcomes[workdir] if o != "held"]
        assert held == ["held"], outcomes[workdir]
        assert re.fullmatch(rf"{re.escape(workdir)}( is in use by another trainer \(pid \d+ .*|: another trainer "
                            r"took the lease .* at the same time)", refused), outcomes[workdir]
    assert not list(storage.client().list_blobs(bucket, prefix="race/"))  # every lease released


def test_a_lease_in_a_bucket_whose_holder_is_gone_is_taken_over_and_refreshed(bucket, monkeypatch):
    from manet_jax.training import workdir as lease_module

    workdir = f"gs://{bucket}/run"
    gone = {"host": "other", "pid": 1, "started": "then", "token": "0123", "machine": None, "process": None,
            "refreshed": 0.0}
    storage.write_object_if(f"{workdir}/lease.json", json.dumps(gone), 0)
    monkeypatch.setattr(lease_module, "REFRESH_SECONDS", 0.05)
    lease = lease_module.Lease.acquire(workdir)
    try:
        lease.check()
        first = storage.read_object(f"{workdir}/lease.json")
        lease._stop.wait(0.5)
        second = storage.read_object(f"{workdir}/lease.json")
        assert json.loads(second[0])["refreshed"] > json.loads(first[0])["refreshed"]  # refreshed in place
        with pytest.raises(lease_module.WorkdirBusyError, match="is in use by another trainer"):
            lease_module.Lease.acquire(workdir)
    finally:
        lease.release()
    assert storage.read_object(f"{workdir}/lease.json") is None


def test_a_lease_in_a_bucket_checked_while_it_is_refreshed_stays_held(bucket, monkeypatch):
    """gcsfs reads an object rewritten meanwhile cut to the size it had: a check during a refresh
    took the lease for damaged, and stopped a run in the bucket as if another trainer had taken it."""
    from manet_jax.training import workdir as lease_module

    monkeypatch.setattr(lease_module, "REFRESH_SECONDS", 0)  # refreshed again and again
    lease = lease_module.Lease.acquire(f"gs://{bucket}/run")
    try:
        first = storage.read_object(f"gs://{bucket}/run/lease.json")
        for _ in range(100):
            lease.check()
        assert storage.read_object(f"gs://{bucket}/run/lease.json")[1] > first[1] + 10  # refreshed meanwhile
    finally:
        lease.release()


# The trainer with a gs:// workdir

@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache, emulator) -> dict:
    setup = trainer_setup(tmp_path_factory.mktemp("gcs_train"), compilation_cache)
    return {**setup, "env": {**setup["env"], **emulator.environment()}}


@pytest.fixture(scope="module")
def reference(setup, emulator, tmp_path_factory) -> Path:
    """The uninterrupted run in a bucket, copied to a local folder; steps 2 and 3 profiled."""
    workdir = f"gs://{emulator.new_bucket()}/run"
    result = run(command(setup, workdir, "--config.profile_steps=2:3"), setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (REPO / "gs:").exists()  # nothing written to a local folder named like the URL
    setup["reference_url"], setup["reference_output"] = workdir, result.stderr
    return download(workdir, tmp_path_factory.mktemp("gcs_reference"))


@pytest.mark.slow  # a trainer process
def test_a_run_keeps_everything_in_the_bucket(setup, reference):
    names = sorted(p.name for p in reference.iterdir())
    assert names == ["checkpoints", "config.json", "metrics.jsonl", "profile", "summary.json",
                     "tensorboard"]  # lease released
    assert len(list((reference / "profile").glob("plugins/profile/*/*.xplane.pb"))) == 1
    assert f"profile of steps 2..3 in {setup['reference_url']}/profile" in setup["reference_output"]
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["12", "4", "8"]
    assert all((reference / "checkpoints" / step / "commit_success.txt").exists() for step in ("4", "8", "12"))
    logged = records(reference)
    assert [r["step"] for r in logged if "train" in r] == list(range(1, TOTAL + 1))
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["last"]["step"] == TOTAL
    scalars = tensorboard_scalars(reference)  # TensorBoard's events, read back from the bucket
    assert {step: value for step, value in scalars["train/loss"].items()} == {
        r["step"]: pytest.approx(r["train"]["loss"], rel=1e-6) for r in logged if "train" in r}
    assert f"summary in {setup['reference_url']}/summary.json" in setup["reference_output"]


def committed(url: str) -> bool:
    return storage.read_object(f"{url}/commit_success.txt") is not None


def leave_unfinished(checkpoints: str, step: int) -> None:
    """Makes checkpoint `step` a write that did not finish, if the kill did not leave it so: its
    objects without Orbax's commit marker (those of the checkpoint before it if there are none)."""
    from etils import epath

    bucket, name = storage.bucket_and_name(f"{checkpoints}/{step}")
    if not epath.Path(f"{checkpoints}/{step}").exists():
        _, earlier = storage.bucket_and_name(f"{checkpoints}/{step - 4}")
        source = storage.client().bucket(bucket)
        for blob in source.list_blobs(prefix=earlier + "/"):
            source.copy_blob(blob, source, name + blob.name.removeprefix(earlier))
    if committed(f"{checkpoints}/{step}"):
        storage.client().bucket(bucket).blob(f"{name}/commit_success.txt").delete()
    assert not committed(f"{checkpoints}/{step}")


def cut_off_during_the_write(emulator, objects: str, process: subprocess.Popen, seen: list[list[str]]) -> None:
    """Stops the emulator once the first `objects` (a prefix in its bucket) appear, while `process`
    runs, and starts it again 15 s later; `seen` gets the objects there were."""
    bucket, prefix = storage.bucket_and_name(objects)
    while process.poll() is None and not seen:
        if names := [blob.name for blob in storage.client().list_blobs(bucket, prefix=prefix)]:
            emulator.stop()
            seen.append(names)
            time.sleep(15)
            emulator.start()


@pytest.mark.slow  # trainer processes, stopped, killed, cut off and resumed
def test_a_run_in_a_bucket_stopped_killed_cut_off_and_resumed_ends_as_the_uninterrupted_one(setup, emulator,
                                                                                           reference, tmp_path):
    """SIGTERM, SIGKILL while a checkpoint is written, and then in the last run the network gone for
    15 s once the last checkpoint's first objects are in the bucket, before its commit marker: the
    storage libraries' retries carry the write and the run over it. The run ends bit-identical to
    the uninterrupted one."""
    bucket = emulator.new_bucket()
    workdir = f"gs://{bucket}/run"
    code, output = run_and_signal(command(setup, workdir), setup["env"], lambda line: "step 2/12" in line,
                                  signal.SIGTERM)
    assert code == 0, output[-3000:]
    preempted = int(re.search(r"preempted at step (\d+)", output).group(1))
    assert committed(f"{workdir}/checkpoints/{preempted}")
    # Resumed, then SIGKILL while the epoch-2 checkpoint (step 8) is written in the background.
    code, output = run_and_signal(command(setup, workdir), setup["env"], lambda line: "step 9/12" in line,
                                  signal.SIGKILL)
    assert code == -signal.SIGKILL, output[-3000:]
    assert f"resuming from checkpoint {preempted}" in output
    # As the kill left it, or made so: a step folder without its commit marker, which resuming skips
    leave_unfinished(f"{workdir}/checkpoints", 8)
    process = subprocess.Popen(command(setup, workdir), env=setup["env"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    seen: list[list[str]] = []
    watcher = threading.Thread(target=cut_off_during_the_write,
                               args=(emulator, f"{workdir}/checkpoints/{TOTAL}/", process, seen))
    watcher.start()
    try:
        _, errors = process.communicate(timeout=600)
    finally:
        process.kill()
        watcher.join()
        if emulator.process is None:
            emulator.start()
    assert process.returncode == 0, errors[-3000:]
    assert f"removing {workdir}/checkpoints/8, left by a checkpoint write that did not finish" in errors
    assert "resuming from checkpoint 4" in errors
    assert f"taking over the lease {workdir}/lease.json of a trainer that is gone (pid " in errors
    assert seen and f"run/checkpoints/{TOTAL}/commit_success.txt" not in seen[0], seen  # cut off during the write
    assert committed(f"{workdir}/checkpoints/{TOTAL}")

    interrupted = download(workdir, tmp_path / "interrupted")
    expected = load_bundle(reference / "checkpoints" / str(TOTAL)).variables
    actual = load_bundle(interrupted / "checkpoints" / str(TOTAL)).variables
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert records(interrupted) == records(reference)  # the log continues as if never interrupted


@pytest.mark.slow  # compiles the 64x64 model in this process for each tool
def test_the_reading_tools_take_a_model_in_a_bucket(setup, reference, tmp_path, capsys):
    from etils import epath
    from PIL import Image

    from manet_jax import evaluate, export, predict
    from manet_jax.convert.__main__ import main as convert

    url, test_set = setup["reference_url"], f"{DATASET}/test"
    assert evaluate.main(["--checkpoint", url, "--dataset", DATASET, "--data-dir", str(setup["data_dir"]),
                          "--batch-size", "10"]) == 0
    metrics = json.loads(epath.Path(f"{url}/eval/{test_set.replace('/', '_')}/metrics.json").read_text())
    best = json.loads((reference / "summary.json").read_text())["best"]["eval"][test_set]
    assert metrics["count"] == 20 and metrics["fused"]["accuracy"] == best["fused"]["accuracy"]
    assert epath.Path(f"{url}/eval/{test_set.replace('/', '_')}/confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    face = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(face)
    for model, output in ((url, tmp_path / "bucket.json"), (reference, tmp_path / "local.json")):
        assert predict.main([str(face), "--checkpoint", str(model), "--no-detect", "--output", str(output)]) == 0
    assert json.loads((tmp_path / "bucket.json").read_text()) == json.loads((tmp_path / "local.json").read_text())

    assert export.main(["--checkpoint", url, "--format", "stablehlo", "--output", str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "manet_export.json").read_text())["image_size"] == 64

    capsys.readouterr()
    assert convert(["inspect", f"{url}/checkpoints/{TOTAL}", "--image-size", "64"]) == 1  # random weights: weak
    output = capsys.readouterr().out
    assert f"weights: {url}/checkpoints/{TOTAL} (model of the 2023 wiring by its header)" in output
    assert "weak evidence: the weights fit" in output


@pytest.mark.slow  # trainer processes; the emulator stopped mid-run
def test_a_bucket_gone_mid_run_stops_it_in_one_line_and_the_run_resumes_once_it_is_back(
        setup, emulator, reference, tmp_path):
    """The network gone between checkpoint writes. (Gone during an array write, tensorstore retries
    for up to about 15 minutes before the save fails: too long for the suite.)"""
    bucket = emulator.new_bucket()
    workdir, checkpoint = f"gs://{bucket}/run", f"gs://{bucket}/run/checkpoints/4"
    saved: dict[str, bytes] = {}

    def objects() -> dict[str, bytes]:
        return {blob.name: blob.download_as_bytes()
                for blob in storage.client().list_blobs(bucket, prefix="run/checkpoints/4/")}

    process = subprocess.Popen(command(setup, workdir), env=setup["env"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            step = re.search(r"step (\d+)/12", line)
            if not saved and step and int(step.group(1)) >= 5 and committed(checkpoint):
                saved.update(objects())
                emulator.stop()
        code = process.wait(600)
    finally:
        process.kill()
        if emulator.process is None:
            emulator.start()  # with the objects it had: they are kept in a folder
    output = "".join(lines)
    assert code == 2, output[-3000:]
    assert "Traceback" not in output and [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert re.fullmatch(rf"error: gs://{bucket} cannot be reached \(ClientConnectorError: Cannot connect to host "
                        rf"127\.0\.0\.1:{emulator.port} .*\); the last complete checkpoint is {checkpoint}: run the "
                        r"same command to resume from it once the cause is fixed\n", lines[-1]), lines[-1]
    assert committed(checkpoint) and objects() == saved  # untouched

    result = run(command(setup, workdir), setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from checkpoint 4" in result.stderr
    assert records(download(workdir, tmp_path / "resumed")) == records(reference)


@pytest.mark.parametrize("workdir, message", [
    ("gs://Bad_Name/run", r"--workdir gs://Bad_Name/run: 'Bad_Name' is not a Cloud Storage bucket name"),
    ("gs://missing-bucket-9/run", r"--workdir gs://missing-bucket-9/run: the bucket gs://missing-bucket-9 does not "
                                  r"exist \(create it, or check the name\)"),
])
def test_the_trainer_refuses_a_malformed_url_or_a_missing_bucket_in_one_line(emulator, workdir, message, capsys):
    from manet_jax import train

    assert train.main(["--config", str(REPO / "configs/demo.py"), "--workdir", workdir]) == 2
    error = capsys.readouterr().err
    assert re.fullmatch(rf"error: {message}[^\n]*\n", error), error
    assert workdir[5:].split("/")[0] not in [b.name for b in storage.client().list_buckets()]  # nothing made
