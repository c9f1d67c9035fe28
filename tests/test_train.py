"""The trainer end to end on a tiny synthetic dataset (CPU, 64x64, 3 epochs of 4 steps of 8 images).

One uninterrupted run is the reference: it must write its outputs, learn, evaluate every test
image once, and end with exactly the parameters of a run that is stopped by SIGTERM, resumed,
killed by SIGKILL and resumed again. Runs are subprocesses sharing a compilation cache.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import data_fixtures as fx
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from etils import epath
from tensorflow.core.util import event_pb2

from manet_jax.bundle import ModelSpec, absolute_path, load_bundle, state_bytes
from manet_jax.data.errors import DatasetNameError, DatasetNotFoundError
from manet_jax.errors import ConfigError
from manet_jax.mesh import make_mesh
from manet_jax.models import MANet
from manet_jax.report import main as report
from manet_jax.storage import replace_text
from manet_jax.training.build import build
from manet_jax.training.checkpoints import CORRUPT, CheckpointRestoreError, CheckpointSaveError, Checkpoints, check_room
from manet_jax.training.config import RANGES, base_config, eval_sets, load_config
from manet_jax.training.record import MetricWriter, MetricsFileError
from manet_jax.training.run import StepTrace, train_and_evaluate
from manet_jax.training.steps import TrainState, abstract_train_state, sgd, step_lr
from manet_jax.training.workdir import remove_temporary_files
from train_helpers import (DATASET, EPOCHS, REPO, STEPS_PER_EPOCH, TEST_LABEL_COUNTS, command, run, run_and_signal,
                           run_timing_exit, tmpfs, trainer_setup)

TOTAL = EPOCHS * STEPS_PER_EPOCH
TEST_SET = f"{DATASET}/test"  # the eval set of the runs on DATASET
# 25 + 7 train images: 4 steps of 8 an epoch, as the reference run's, whose compiled steps it reuses
UNION = "synthetic_faces/64_25_20+image_folder/7"
CROSS = "image_folder/8/test"  # one test image per class: a 7-class model leaves out Contempt's
OPTIMIZER = sgd(step_lr(0.01, STEPS_PER_EPOCH, 2, 0.1))  # the runs' optimizer, for restoring their states


@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache) -> dict:
    return trainer_setup(tmp_path_factory.mktemp("train"), compilation_cache)


@pytest.fixture(scope="module")
def reference_run(setup) -> tuple[Path, str, float]:
    """The uninterrupted run: its workdir, output, and seconds from its last line to its exit. Once
    it trains, the same command is run again (`second_trainer`)."""
    workdir = setup["root"] / "reference"

    def start_second_trainer(line: str, process: subprocess.Popen) -> None:
        if "step 1/12" in line:
            setup["second_trainer"] = (process.pid, run(command(setup, workdir), setup["env"]))

    code, output, exit_delay = run_timing_exit(command(setup, workdir), setup["env"], on_line=start_second_trainer)
    assert code == 0, output[-3000:]
    return workdir, output, exit_delay


@pytest.fixture(scope="module")
def reference(reference_run) -> Path:
    return reference_run[0]


@pytest.mark.slow  # the reference run: a trainer process
def test_a_second_trainer_on_a_workdir_stops_at_once_naming_the_first(setup, reference):
    first_pid, second = setup["second_trainer"]
    assert second.returncode == 2
    assert re.fullmatch(
        rf"error: {re.escape(str(reference))} is in use by another trainer \(pid {first_pid} on "
        rf"{re.escape(socket.gethostname())}, started \S+; {re.escape(str(reference / 'lease.json'))}\)\. Wait for "
        r"it to finish, stop it, or use another workdir; a lease whose trainer has gone is taken over \(from another "
        r"machine 5 minutes after its last refresh\)\n", second.stderr), second.stderr[-3000:]
    # Nothing of the second: one TensorBoard event file, each record once (tested below), the lease released.
    assert len(list((reference / "tensorboard").iterdir())) == 1
    assert not (reference / "lease.json").exists()


@pytest.mark.slow  # the reference run: a trainer process
def test_a_finished_run_exits_promptly(reference_run):
    """tf.data's autotuning thread once held finished runs for up to a minute after their last line."""
    _, output, exit_delay = reference_run
    assert output.splitlines()[-1].endswith(f"summary in {reference_run[0] / 'summary.json'}")
    assert exit_delay < 20


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def logged_results(workdir: Path) -> list:
    """The metric records without their timings."""
    return [{key: value for key, value in r.items() if key != "images_per_second"} for r in records(workdir)]


def final_params(workdir: Path) -> dict:
    return load_bundle(workdir / "checkpoints" / str(TOTAL)).variables


def tensorboard_events(workdir: Path) -> dict[str, dict[int, np.ndarray]]:
    """{tag: {step: value}} of the run's TensorBoard event files."""
    events = {}
    for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
        for data in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(data.numpy())
            for value in event.summary.value:
                events.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return events


@pytest.mark.slow  # the reference run: a trainer process
def test_trains_logs_checkpoints_and_evaluates_every_example_once(reference):
    lines = records(reference)
    train = [r for r in lines if "train" in r]
    assert [r["step"] for r in train] == list(range(1, TOTAL + 1))
    epochs = [r for r in lines if "train_epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["train_epoch"]["loss"] < epochs[0]["train_epoch"]["loss"]
    for record in epochs:
        assert list(record["eval"]) == [TEST_SET]
        results = record["eval"][TEST_SET]
        assert (results["dataset"], results["split"]) == (DATASET, "test") and "left_out" not in results
        for head in ("fused", "local", "global"):
            confusion = np.array(results[head]["confusion_matrix"])
            assert results[head]["count"] == confusion.sum() == 20
            assert confusion.sum(1).tolist() == TEST_LABEL_COUNTS
    assert all(r["images_per_second"] > 0 for r in train[1:])
    assert json.loads((reference / "config.json").read_text())["batch_size"] == 8
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["ranked_by"] == TEST_SET and summary["last"]["epoch"] == 3
    assert summary["best"]["eval"][TEST_SET]["fused"]["accuracy"] == max(
        r["eval"][TEST_SET]["fused"]["accuracy"] for r in epochs)
    events = tensorboard_events(reference)
    assert events["train/loss"] == pytest.approx({r["step"]: r["train"]["loss"] for r in train})
    assert events[f"eval/{TEST_SET}/fused/accuracy"] == pytest.approx(
        {r["step"]: r["eval"][TEST_SET]["fused"]["accuracy"] for r in epochs})
    images = events[f"eval/{TEST_SET}/fused/confusion_matrix"]
    for step, (width, height, png) in images.items():  # the images plugin's format
        assert step in (4, 8, 12) and tf.io.decode_png(png).shape == (int(height), int(width), 3)
    assert len(images) == 3
    # The latest two checkpoints and the best one.
    steps = {int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit()}
    assert {8, 12, summary["best"]["step"]} == steps
    bundle = load_bundle(reference)  # the workdir's model: its best checkpoint
    assert bundle.step == summary["best"]["step"] and bundle.spec.num_classes == 7
    assert bundle.spec.class_names[:2] == ("Neutral", "Happiness")
    assert (bundle.spec.image_size, bundle.spec.beta, bundle.spec.multiscale_wiring) == (64, 0.6, "2023")
    assert bundle.variables["params"]["fc_1"]["kernel"].shape == (512, 7)


@pytest.fixture(scope="module")
def union_run(setup) -> tuple[Path, str]:
    """A run trained on the union of a synthetic set and an image_folder/7, evaluated on an image_folder/8
    (the first eval set, which ranks the checkpoints) and on DATASET's test split, for 2 epochs:
    (workdir, output)."""
    root, data_dir = setup["root"], setup["data_dir"]
    folders = {str(k): k for k in range(8)}
    fx.make_class_folders(root / "manual7", {"train": "train", "test": "test"}, dict(list(folders.items())[:7]),
                          ".png", {"train": 1, "test": 1}, size=(64, 64))
    fx.build("image_folder/7", data_dir, root / "manual7")
    fx.make_class_folders(root / "manual8", {"train": "train", "test": "test"}, folders, ".jpg",
                          {"train": 1, "test": 1}, seed=1, size=(48, 40))
    fx.build("image_folder/8", data_dir, root / "manual8")
    workdir = root / "union_seed0"
    result = run(command(setup, workdir, f"--config.dataset={UNION}", f"--config.eval_dataset=image_folder/8,{DATASET}",
                         "--config.num_epochs=2", "--config.seed=0", "--config.log_every_steps=4"), setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stderr


@pytest.mark.slow  # the union run: a trainer process
def test_a_union_of_datasets_evaluated_on_others_side_by_side(union_run):
    workdir, output = union_run
    assert (f"{UNION}: 32 train examples, 7 classes, evaluated on {CROSS} (7), {TEST_SET} (20); steps 1..8 of "
            "batch 8 (4 per epoch)") in output
    epochs = [r for r in records(workdir) if "train_epoch" in r]
    assert [r["step"] for r in epochs] == [4, 8]
    for record in epochs:
        assert list(record["eval"]) == [CROSS, TEST_SET]
        cross, own = record["eval"][CROSS], record["eval"][TEST_SET]
        assert cross["left_out"] == {"Contempt": 1} and cross["count"] == 7 and "left_out" not in own
        assert np.array(cross["fused"]["confusion_matrix"]).sum(1).tolist() == [1] * 7
        assert np.array(own["fused"]["confusion_matrix"]).sum(1).tolist() == TEST_LABEL_COUNTS
        assert re.search(rf"epoch {record['epoch']}/2 {CROSS} accuracy .*, n=7, Contempt 1 left out; train accuracy "
                         rf".*\n  epoch {record['epoch']}/2 {TEST_SET} accuracy .*, n=20\n", output)
    # The first eval set ranks the epochs (the earlier on ties) and the checkpoints.
    accuracies = [r["eval"][CROSS]["fused"]["accuracy"] for r in epochs]
    best_epoch = accuracies.index(max(accuracies)) + 1
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["ranked_by"] == CROSS and summary["best"]["epoch"] == best_epoch
    assert list(summary["best"]["eval"]) == [CROSS, TEST_SET]
    assert load_bundle(workdir).step == 4 * best_epoch
    events = tensorboard_events(workdir)
    for name in (CROSS, TEST_SET):
        assert events[f"eval/{name}/fused/accuracy"] == pytest.approx(
            {r["step"]: r["eval"][name]["fused"]["accuracy"] for r in epochs})
        assert sorted(events[f"eval/{name}/fused/confusion_matrix"]) == [4, 8]
    assert events[f"eval/{CROSS}/left_out/Contempt"] == {4: 1, 8: 1}


def other_seed(workdir: Path, seed: int, scale: float) -> Path:
    """A copy of `workdir`'s config and summary as if run with `seed`: its evaluations' rates scaled."""
    def scaled(tree: Any) -> Any:
        if isinstance(tree, dict):
            return {key: value if key == "confusion_matrix" else scaled(value) for key, value in tree.items()}
        return scale * tree if isinstance(tree, float) else tree

    copy = workdir.with_name(f"{workdir.name.rsplit('seed', 1)[0]}seed{seed}")
    copy.mkdir()
    config = json.loads((workdir / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "seed": seed}))
    summary = json.loads((workdir / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, **{key: {**summary[key], "eval": scaled(
        summary[key]["eval"])} for key in ("best", "last")}}))
    return copy


@pytest.mark.slow  # the union run: a trainer process
def test_report_of_two_seeds(union_run, tmp_path, capsys):
    """Two seeds of the union run (the second's summary made from the first's, scaled)."""
    workdirs = [union_run[0], other_seed(union_run[0], 1, 0.75)]
    assert report([str(workdirs[0].parent / "union_seed*"), "--json", str(tmp_path / "report.json"),
                   "--markdown", str(tmp_path / "report.md")]) == 0
    table = json.loads((tmp_path / "report.json").read_text())
    markdown = (tmp_path / "report.md").read_text()
    assert capsys.readouterr().out == markdown
    assert table["runs"] == [str(w) for w in workdirs] and table["ranked_by"] == CROSS
    assert table["config_differences"] == {"seed": [0, 1]}
    summaries = [json.loads((w / "summary.json").read_text()) for w in workdirs]
    for key in ("best", "last"):
        assert table[key]["epochs"] == [s[key]["epoch"] for s in summaries]
        for name in (CROSS, TEST_SET):
            for head in ("fused", "local", "global"):
                got = table[key]["eval"][name][head]
                for metric, values in [(m, [s[key]["eval"][name][head][m] for s in summaries])
                                       for m in ("accuracy", "mean_class_accuracy")] + \
                                      [(f"recall {c}", [s[key]["eval"][name][head]["recall"][c] for s in summaries])
                                       for c in ("Neutral", "Anger")]:
                    spread = got[metric] if metric in got else got["recall"][metric.split()[1]]
                    assert spread["values"] == values and (spread["min"], spread["max"]) == (min(values), max(values))
                    assert (spread["mean"], spread["std"]) == pytest.approx((np.mean(values), np.std(values, ddof=1)))
                    assert f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f} " \
                           f"({100 * min(values):.2f}–{100 * max(values):.2f})" in markdown
            assert "Contempt" not in table[key]["eval"][name]["fused"]["recall"]  # left out: no recall
    assert f"## Best epoch (per run: {summaries[0]['best']['epoch']}, {summaries[1]['best']['epoch']})" in markdown


@pytest.mark.slow  # the union and reference runs
def test_report_refuses_runs_of_other_recipes_and_reads_older_summaries(union_run, reference, tmp_path, capsys):
    assert report([str(reference), str(union_run[0])]) == 2
    assert f"error: {union_run[0]} evaluated ['{CROSS}', '{TEST_SET}'] (ranked by {CROSS})" in capsys.readouterr().err
    assert report([str(tmp_path / "nothing")]) == 2
    assert "nothing: no summary.json" in capsys.readouterr().err
    # A summary as the trainer wrote it before eval sets: one evaluation per entry, its split inside.
    older = tmp_path / "older"
    older.mkdir()
    shutil.copy(reference / "config.json", older)
    summary = json.loads((reference / "summary.json").read_text())
    (older / "summary.json").write_text(json.dumps({key: {**summary[key], "eval": {
        k: v for k, v in summary[key]["eval"][TEST_SET].items() if k != "dataset"}} for key in ("best", "last")}))
    assert report([str(reference), str(older), "--json", str(tmp_path / "r.json")]) == 0
    table = json.loads((tmp_path / "r.json").read_text())
    assert table["ranked_by"] == TEST_SET and table["best"]["eval"][TEST_SET]["fused"]["accuracy"]["std"] == 0.0


@pytest.mark.slow  # trainer processes, stopped and resumed
def test_preempted_and_killed_run_resumes_exactly(setup, reference):
    workdir = setup["root"] / "interrupted"
    # SIGTERM in the first epoch: a checkpoint at the current step, a clean exit.
    code, output = run_and_signal(command(setup, workdir), setup["env"], lambda line: "step 2/12" in line,
                                  signal.SIGTERM)
    assert code == 0, output[-3000:]
    preempted = int(re.search(r"preempted at step (\d+)", output).group(1))
    assert (workdir / "checkpoints" / str(preempted)).is_dir()
    # Resumed, then SIGKILL in the second half of epoch 2, once the epoch-1 checkpoint is committed
    # (it is written asynchronously, so on a busy machine it may appear a step or two late).
    def killed(line: str) -> bool:
        step = re.search(r"step (\d+)/12", line)
        return bool(step) and 6 <= int(step.group(1)) <= 8 and (workdir / "checkpoints" / "4").is_dir()

    code, output = run_and_signal(command(setup, workdir), setup["env"], killed, signal.SIGKILL)
    assert code == -signal.SIGKILL, output[-3000:]
    assert f"resuming from checkpoint {preempted}" in output
    with (workdir / "metrics.jsonl").open("a") as f:  # as a kill in the middle of an append leaves it
        f.write('{"step": 9, "epoch": 2.25, "tr')
    lines = len((workdir / "metrics.jsonl").read_text().splitlines())
    (workdir / ".summary.json.0123abcd.tmp.json").write_text("{")  # as a kill while replacing it leaves it
    result = run(command(setup, workdir), setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (workdir / ".summary.json.0123abcd.tmp.json").exists()
    assert "resuming from checkpoint" in result.stderr
    assert f"{workdir / 'metrics.jsonl'}: dropped line {lines}, cut short" in result.stderr
    assert f"taking over the lease {workdir / 'lease.json'} of a trainer that is gone (pid " in result.stderr

    expected, actual = final_params(reference), final_params(workdir)
    assert jax.tree.structure(expected) == jax.tree.structure(actual)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert logged_results(workdir) == logged_results(reference)  # the log continues as if never interrupted


def test_a_file_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "summary.json"
    replace_text(path, "old\n")
    with pytest.raises(UnicodeEncodeError):  # fails once the temporary file is open, as a full disk would
        replace_text(path, "new " * 1000 + "\udc80")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["summary.json"]
    replace_text(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["summary.json"]


def test_temporary_files_left_by_a_killed_run_are_removed_but_those_in_use(tmp_path):
    names = [".summary.json.0123abcd.tmp.json", ".config.json.89abcdef.tmp",  # the second as older versions named it
             ".lease.json.4567cdef.tmp.json", ".notes.tmp", "summary.json.0123abcd.tmp"]
    for name in names:
        (tmp_path / name).write_text("{")
    remove_temporary_files(tmp_path, in_use=["lease.json"])
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])


def test_a_metrics_line_cut_short_is_dropped_and_a_damaged_one_before_it_named(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "tr')
    writer = MetricWriter(tmp_path)
    writer.truncate(1)
    assert path.read_text() == '{"step": 1}\n'
    assert f"{path}: dropped line 3, cut short" in caplog.text
    path.write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
    with pytest.raises(MetricsFileError, match=f"^{re.escape(str(path))}: line 2 is not a metric record"):
        writer.truncate(3)
    writer.close()


def linked_copy(workdir: Path, to: Path) -> Path:
    """A copy of `workdir` whose files are hard links (damage them with `truncate`)."""
    shutil.copytree(workdir, to, copy_function=os.link)
    return to


def truncate(path: Path) -> None:
    """Cuts `path` to half its length in a new file (the linked original stays as it was)."""
    content = path.read_bytes()
    path.unlink()
    path.write_bytes(content[:len(content) // 2])


@pytest.mark.slow  # the reference run: a trainer process
@pytest.mark.parametrize("damaged", ["variables data", "metrics/metrics", "host_state/metadata",
                                     "header/manet.json", "_CHECKPOINT_METADATA"])
def test_a_damaged_file_in_the_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, caplog,
                                                                                 damaged):
    workdir = linked_copy(reference, tmp_path / "workdir")
    latest = workdir / "checkpoints" / "12"
    truncate(max((latest / "variables").rglob("*"), key=lambda p: p.stat().st_size) if damaged == "variables data"
             else latest / damaged)
    (workdir / "checkpoints" / "16.orbax-checkpoint-tmp").mkdir()  # a write that never finished
    target = abstract_train_state(MANet(7), OPTIMIZER, make_mesh())
    checkpoints = Checkpoints(workdir / "checkpoints")
    state, host_state = checkpoints.restore_latest(target)
    assert int(state.step) == 8 and host_state["summary"]["last"]["epoch"] == 2
    assert "checkpoints/12 cannot be restored" in caplog.text
    assert (workdir / CORRUPT / "12").is_dir() and checkpoints.latest_step() == 8
    assert not (workdir / "checkpoints" / "16.orbax-checkpoint-tmp").exists()
    checkpoints.close()


@pytest.mark.slow  # the reference run: a trainer process
def test_when_every_checkpoint_is_damaged_each_is_named_and_none_moved(reference, tmp_path):
    workdir = linked_copy(reference, tmp_path / "workdir")
    steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    for step in steps:
        truncate(workdir / "checkpoints" / step / "_CHECKPOINT_METADATA")
    with pytest.raises(CheckpointRestoreError, match="no checkpoint in .* can be restored") as error:
        Checkpoints(workdir / "checkpoints")
    for step in steps:
        assert f"checkpoints/{step}: _CHECKPOINT_METADATA is damaged" in str(error.value)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == steps and not (workdir / CORRUPT).exists()


def test_checkpoints_in_a_relative_directory(tmp_path, monkeypatch):
    """`--workdir runs/demo` as the README writes it: Orbax itself needs absolute paths."""
    monkeypatch.chdir(tmp_path)
    state = TrainState(step=np.int32(1), params={"w": np.arange(3.0, dtype=np.float32)},
                       batch_stats={"m": np.ones(2, np.float32)}, opt_state={"t": np.zeros(3, np.float32)})
    checkpoints = Checkpoints("runs/demo/checkpoints")
    checkpoints.save(1, jax.device_put(state), ModelSpec(("a", "b")), {"epoch": 1})
    checkpoints.wait()
    checkpoints.close()
    bundle = load_bundle("runs/demo")
    assert bundle.step == 1 and bundle.spec.class_names == ("a", "b")
    np.testing.assert_array_equal(bundle.variables["params"]["w"], state.params["w"])


def test_checkpoints_are_written_uncompressed_and_compressed_ones_still_restore(tmp_path):
    """Orbax compresses arrays with zstd unless told not to; manet-jax wrote its checkpoints so
    until 2026-12-07. A zero momentum compresses to almost nothing: on disk it shows which is which."""
    import orbax.checkpoint as ocp

    from manet_jax.bundle import HEADER, HEADER_FILE, VARIABLES
    from manet_jax.training.checkpoints import HOST_STATE, TRAIN_STATE

    spec, size = ModelSpec(("a", "b")), 250_000
    state = TrainState(step=np.int32(3), params=random_state(size).params, batch_stats={"m": np.ones(2, np.float32)},
                       opt_state={"t": np.zeros(size, np.float32)})
    checkpoints = Checkpoints(tmp_path / "new")
    checkpoints.save(3, jax.device_put(state), spec, {"epoch": 3})
    checkpoints.close()
    with ocp.CheckpointManager(tmp_path / "old", item_handlers={  # as manet-jax saved until 2026-12-07
            VARIABLES: ocp.StandardCheckpointHandler(), HEADER: ocp.JsonCheckpointHandler(filename=HEADER_FILE),
            TRAIN_STATE: ocp.StandardCheckpointHandler(), HOST_STATE: ocp.JsonCheckpointHandler()}) as manager:
        manager.save(3, args=ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardSave(state.variables), HEADER: ocp.args.JsonSave(spec.to_json()),
            TRAIN_STATE: ocp.args.StandardSave(state.run_state), HOST_STATE: ocp.args.JsonSave({"epoch": 3})}))

    def on_disk(item: Path) -> int:
        return sum(p.stat().st_size for p in item.rglob("*") if p.is_file())

    assert on_disk(tmp_path / "new/3" / TRAIN_STATE) > 4 * size > 100 * on_disk(tmp_path / "old/3" / TRAIN_STATE)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    for written in ("new", "old"):
        checkpoints = Checkpoints(tmp_path / written)
        restored, host_state = checkpoints.restore_latest(target)
        checkpoints.close()
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
            np.testing.assert_array_equal(a, b, err_msg=written)
        assert host_state == {"epoch": 3}
        assert load_bundle(tmp_path / written / "3").spec == spec


def test_while_a_checkpoint_is_written_the_error_hint_names_the_one_before(tmp_path):
    """A run stopped by an error (a bucket gone) while a checkpoint is written resumes from the one
    before it: the hint must not name the one in progress, which Orbax lists from the start."""
    checkpoints, spec = Checkpoints(tmp_path / "checkpoints"), ModelSpec(("a", "b"))
    checkpoints.save(1, jax.device_put(random_state(1_000)), spec, {"epoch": 1})
    checkpoints.wait()
    checkpoints.save(2, jax.device_put(random_state(50_000_000, 2)), spec, {"epoch": 2})  # 200 MB: a second
    try:
        assert checkpoints.manager.is_saving_in_progress() and checkpoints.latest_step() == 2
        assert checkpoints.resume_hint().startswith(f"the last complete checkpoint is {tmp_path}/checkpoints/1: ")
    finally:
        checkpoints.wait()
    assert checkpoints.resume_hint().startswith(f"the last complete checkpoint is {tmp_path}/checkpoints/2: ")
    checkpoints.close()


def random_state(size: int, step: int = 1) -> TrainState:
    """A train state of `size` random float32 parameters (which hardly compress: a checkpoint of it
    takes about 4 * `size` bytes on disk)."""
    params = np.random.default_rng(step).standard_normal(size).astype(np.float32)
    return TrainState(step=np.int32(step), params={"w": params}, batch_stats={"m": np.ones(2, np.float32)},
                      opt_state={"t": np.zeros(3, np.float32)})


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def test_a_save_without_room_stops_before_it_writes_anything(tmp_path, caplog):
    """A 4 MB disk holds one checkpoint of 2 MB, not two: the second save is refused as it starts."""
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        checkpoints, spec = Checkpoints(disk / "checkpoints"), ModelSpec(("a", "b"))
        checkpoints.save(1, jax.device_put(random_state(500_000)), spec, {"epoch": 1})
        assert f"less than two checkpoints ({megabytes(state_bytes(random_state(500_000)))} each)" in caplog.text
        checkpoints.wait()
        on_disk = sum(p.stat().st_size for p in (disk / "checkpoints/1").rglob("*") if p.is_file())
        assert checkpoints.checkpoint_bytes() == max(on_disk, state_bytes(random_state(500_000)))
        with pytest.raises(CheckpointSaveError) as error:
            checkpoints.save(2, jax.device_put(random_state(500_000, 2)), spec, {"epoch": 2})
        directory = disk / "checkpoints"
        assert str(error.value) == (
            f"checkpoint 2 could not be written to {directory}: no space left on device (a checkpoint needs "
            f"{megabytes(checkpoints.checkpoint_bytes())}; {megabytes(shutil.disk_usage(disk).free)} free now); "
            f"the last complete checkpoint is {directory}/1: run the same command to resume from it once the cause "
            "is fixed")
        assert sorted(p.name for p in directory.iterdir()) == ["1"]  # nothing of checkpoint 2 was written
        checkpoints.close()
        assert load_bundle(disk).step == 1


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_the_run(tmp_path):
    state = random_state(500_000)
    abstract = jax.eval_shape(lambda: state)
    assert state_bytes(abstract) == state_bytes(state) == sum(x.nbytes for x in jax.tree.leaves(state))
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        with pytest.raises(CheckpointSaveError) as error:
            check_room(disk / "run/checkpoints", abstract)
        assert str(error.value) == (
            f"checkpoints cannot be written to {disk}/run/checkpoints: no space left on device (a checkpoint needs "
            f"2 MB; 1 MB free now); no checkpoint was saved: run the same command to start again once the cause is "
            "fixed")
        assert list(disk.iterdir()) == []
        check_room(disk / "run/checkpoints", random_state(100))  # room for a smaller one


def test_a_damaged_array_file_is_named_in_one_warning_and_the_previous_checkpoint_restored(tmp_path, caplog,
                                                                                         capfd):
    checkpoints, spec = Checkpoints(tmp_path / "checkpoints"), ModelSpec(("a", "b"))
    for step in (1, 2):
        checkpoints.save(step, jax.device_put(random_state(30_000, step)), spec, {"epoch": step})
        checkpoints.wait()
    checkpoints.close()
    truncate(max((p for p in (tmp_path / "checkpoints/2/variables").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size))  # the data file of params.w
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), random_state(30_000))
    state, host_state = checkpoints.restore_latest(target)
    checkpoints.close()
    gc.collect()  # Python reports a coroutine left unawaited as it collects it
    np.testing.assert_array_equal(state.params["w"], random_state(30_000, 1).params["w"])
    assert int(state.step) == 1 and host_state == {"epoch": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "manet_jax" in r.name]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"checkpoint {tmp_path / 'checkpoints/2'} cannot be restored (variables/params.w "
                                  'is damaged: OUT_OF_RANGE: Error reading "params.w/0"'), warnings[0]
    assert warnings[0].endswith(f"); moved to {tmp_path / CORRUPT / '2'}"), warnings[0]
    assert "pybind11" not in warnings[0] and "Exception ignored" not in capfd.readouterr().err
    assert (tmp_path / CORRUPT / "2").is_dir()


def test_bucket_workdirs_stay_urls(tmp_path, monkeypatch):
    """`--workdir=gs://bucket/run` on a TPU pod: made absolute like a local path, it became
    `<cwd>/gs:/bucket/run` on the local disk."""
    monkeypatch.chdir(tmp_path)
    assert str(absolute_path("gs://bucket/runs/raf/checkpoints")) == "gs://bucket/runs/raf/checkpoints"
    assert absolute_path("runs/raf") == tmp_path / "runs/raf"


@pytest.mark.slow  # the reference run: a trainer process
def test_incompatible_checkpoints_are_an_error_and_left_alone(reference, tmp_path):
    workdir = tmp_path / "workdir"
    shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
    checkpoints = Checkpoints(workdir / "checkpoints")
    with pytest.raises(CheckpointRestoreError, match="a different dataset, class count") as error:
        checkpoints.restore_latest(abstract_train_state(MANet(8), OPTIMIZER, make_mesh()))
    assert "CheckpointMismatchError: 8 array(s) differ from this config: params/fc_1/bias: checkpoint (7,) float32, " \
           "this config (8,) float32; params/fc_1/kernel: checkpoint (512, 7) float32" in str(error.value)
    assert checkpoints.latest_step() == 12 and not (workdir / CORRUPT).exists()
    checkpoints.close()


@pytest.mark.slow  # starts the trainer
def test_unknown_config_key_is_named(setup, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        load_config(str(REPO / "configs/demo.py"), ["lerning_rate=0.1"])
    result = run(command(setup, tmp_path / "workdir", "--config.lerning_rate=0.1"), setup["env"])
    assert result.returncode == 2
    assert "error: unknown config key 'lerning_rate'" in result.stderr
    assert not (tmp_path / "workdir").exists()


@pytest.mark.parametrize("override, message", [
    ("learning_rate=-0.1", "config.learning_rate must be a positive finite number, got -0.1"),
    ("learning_rate=nan", "config.learning_rate must be a positive finite number, got nan"),
    ("lr_gamma=inf", "config.lr_gamma must be a positive finite number (StepLR's factor), got inf"),
    ("momentum=1", "config.momentum must be in [0, 1), got 1.0"),
    ("weight_decay=-1e-4", "config.weight_decay must be a finite number >= 0, got -0.0001"),
    ("beta=1.5", "config.beta must be in [0, 1] (the local branch's weight), got 1.5"),
    ("seed=-1", "config.seed must be an integer in [0, 2**32), got -1"),
    ("num_epochs=0", "config.num_epochs must be an integer >= 1, got 0"),
    ("checkpoint_every_epochs=0", "config.checkpoint_every_epochs must be an integer >= 1, got 0"),
    ("eval_batch_size=-8", "config.eval_batch_size must be an integer >= 1 (or None: batch_size), got -8"),
    ("image_size=50", "config.image_size=50: MA-Net needs an input size that is a positive multiple of 16"),
    ("input.flip_prob=2", "config.input.flip_prob must be a probability in [0, 1], got 2.0"),
    ("input.random_erasing=-0.5", "config.input.random_erasing must be a probability in [0, 1], got -0.5"),
    ("input.crop_scale=(0.9,0.5)", "config.input.crop_scale must be (min, max) with 0 < min <= max <= 1, got (0.9, "),
    ("input.crop_scale=(0.5,)", "config.input.crop_scale must be (min, max) with 0 < min <= max <= 1, got (0.5,)"),
    ("input.crop_ratio=(0,1)", "config.input.crop_ratio must be (min, max) with 0 < min <= max, finite, got (0, 1)"),
    ("input.erasing_scale=(0.1,2)", "config.input.erasing_scale must be (min, max) with 0 <= min <= max <= 1"),
])
def test_values_out_of_range_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(REPO / "configs/demo.py"), [override])


def test_every_numeric_key_has_a_range():
    def numeric_keys(config, prefix=""):
        for key in config.keys():
            kind = config.get_type(key)
            if kind is ml_collections.ConfigDict:
                yield from numeric_keys(config[key], f"{prefix}{key}.")
            elif kind in (int, float, tuple):
                yield prefix + key

    assert set(numeric_keys(base_config())) == set(RANGES) | {"image_size"}  # image_size: ModelSpec checks it


@pytest.mark.slow  # starts the trainer
def test_bad_values_and_dataset_names_stop_with_one_line_before_any_workdir(setup, tmp_path):
    cases = {  # --config.KEY=VALUE: the error line
        "learning_rate=-0.1": "error: config.learning_rate must be a positive finite number, got -0.1",
        "learning_rate=fast": "error: --config.learning_rate=fast: config.learning_rate of configs/demo.py takes a "
                              "number, not 'fast'",
        "image_size=50": "error: config.image_size=50: MA-Net needs an input size that is a positive multiple of 16 "
                         "(224 as in the paper)",
        "dataset=synthetic_faces/33": "error: synthetic_faces/33: the sizes are 32, 48, 64, 96, 112, 224; another size "
                                      "needs the split sizes too, e.g. synthetic_faces/33_4200_700",
    }
    processes = {override: subprocess.Popen(command(setup, tmp_path / str(i), f"--config.{override}"),
                                            env=setup["env"], cwd=REPO, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
                 for i, override in enumerate(cases)}  # at once: each spends its seconds starting up
    for i, (override, process) in enumerate(processes.items()):
        _, stderr = process.communicate(timeout=300)
        assert (process.returncode, stderr.splitlines()) == (2, [cases[override]]), override
        assert not (tmp_path / str(i)).exists()


@pytest.mark.parametrize("override, error, message", [
    ("dataset=faces", DatasetNameError, "unknown dataset 'faces'; known: affectnet, caer_s, fed_ro, fer2013, ferplus, "
                                        "image_folder, raf_db, sfew, synthetic_faces"),
    ("dataset=affectnet/9", DatasetNameError, "unknown dataset 'affectnet/9'; affectnet has affectnet/7, affectnet/8"),
    ("eval_split=validation", DatasetNameError, "synthetic_faces/64_32_20 has no split 'validation' to evaluate; "
                                                "splits: ['train', 'test']"),
])
def test_datasets_and_splits_that_do_not_exist_are_named(setup, override, error, message):
    overrides = [arg.removeprefix("--config.") for arg in command(setup, Path("unused")) if arg.startswith("--config.")]
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        build(load_config(str(REPO / "configs/demo.py"), [*overrides, override]))


def test_missing_dataset_names_the_prepare_command(tmp_path):
    config = load_config(str(REPO / "configs/raf.py"), [f"data_dir={tmp_path}"])
    with pytest.raises(DatasetNotFoundError, match=r"python -m manet_jax.data.prepare --dataset raf_db"):
        train_and_evaluate(config, str(tmp_path / "workdir"))


RECIPES = {  # dataset, epochs, batch, lr, StepLR step and gamma, balanced sampling, initialisation
    "raf": ("raf_db", 100, 128, 0.01, 15, 0.1, False, "weights/Pretrained_on_MSCeleb.pth.tar"),
    "raf_scratch": ("raf_db", 300, 128, 0.01, 70, 0.1, False, ""),
    "affectnet7": ("affectnet/7", 20, 256, 0.01, 5, 0.1, True, "weights/Pretrained_on_MSCeleb.pth.tar"),
    "affectnet8": ("affectnet/8", 20, 256, 0.01, 5, 0.1, True, "weights/Pretrained_on_MSCeleb.pth.tar"),
    "caer_s": ("caer_s", 400, 128, 0.1, 50, 0.5, False, ""),
    "sfew": ("sfew", 100, 128, 0.001, 10, 0.1, False, "workdirs/fer2013"),
    "fer2013": ("fer2013", 40, 128, 0.01, 15, 0.1, False, "weights/Pretrained_on_MSCeleb.pth.tar"),
    "ferplus": ("ferplus", 40, 128, 0.01, 15, 0.1, False, "weights/Pretrained_on_MSCeleb.pth.tar"),
    "fed_ro": ("affectnet/7+raf_db", 20, 256, 0.01, 5, 0.1, True, "weights/Pretrained_on_MSCeleb.pth.tar"),
}
EVAL_SETS = {"fed_ro": [("fed_ro", None)]}  # the others evaluate their own dataset


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_configs_hold_the_reference_recipes(name):
    config = load_config(str(REPO / "configs" / f"{name}.py"))
    assert (config.dataset, config.num_epochs, config.batch_size, config.learning_rate, config.lr_step_epochs,
            config.lr_gamma, config.input.balanced_sampling, config.init_from) == RECIPES[name]
    assert (config.momentum, config.weight_decay, config.beta, config.image_size) == (0.9, 1e-4, 0.6, 224)
    assert (config.input.crop_scale, config.input.flip_prob, config.dtype) == ((0.08, 1.0), 0.5, "float32")
    assert (config.input.random_erasing, config.multiscale_wiring) == (0.0, "2023")
    assert eval_sets(config) == EVAL_SETS.get(name, [(config.dataset, None)])


def profiled(directory: str) -> None:
    """Steps 1..4 of a small jitted computation, 2..3 traced by the trainer's StepTrace into `directory`."""
    trace, state = StepTrace((2, 3), epath.Path(directory), lease=None), jax.numpy.ones((64, 64))
    step = jax.jit(lambda x: jax.numpy.tanh(x @ x))
    for done in range(1, 5):
        trace.before(done)
        state = step(state)
        trace.after(done, state)


def test_a_profile_of_the_chosen_steps_is_written_into_the_workdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    profiled(str(tmp_path / "profile"))
    traces = list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0, list((tmp_path / "profile").rglob("*"))
    assert list((tmp_path / "tmp").iterdir()) == []  # the local recording removed
