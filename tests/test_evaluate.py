"""The evaluator (`python -m manet_jax.evaluate`) and the classification metrics."""

from __future__ import annotations

import csv
import json
import re
import sys

import data_fixtures as fx
import jax.numpy as jnp
import numpy as np
import pytest

from manet_jax import evaluate as evaluate_tool
from manet_jax.bundle import BundleError, ModelSpec, load_bundle, save_bundle
from manet_jax.convert import flax_to_torch, save_state_dict_file
from manet_jax.convert.__main__ import main as convert_main
from manet_jax.data.errors import ClassMapError, DatasetNameError
from manet_jax.data.labels import LEFT_OUT, match_classes
from manet_jax.data.pipeline import DatasetInfo
from manet_jax.errors import ConfigError
from manet_jax.evaluate import parse_class_map
from manet_jax.forward import HEADS, module_for
from manet_jax.mesh import make_mesh
from manet_jax.training import evaluation
from manet_jax.training.config import load_config, parse_eval_sets
from manet_jax.training.evaluation import EvalSet, Evaluator, SetEvaluation, evaluate_model, find_eval_sets
from manet_jax.training.record import format_summary, summary_rows, write_outputs, write_summary
from manet_jax.training.run import evaluate_bundle, evaluate_checkpoint
from manet_jax.training.steps import classification_metrics, confusion_matrix
from train_helpers import (DATASET, REPO, TEST_LABEL_COUNTS, environment, make_checkpoint, make_dataset, random_variables,
                           run, tmpfs)

CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
EIGHT = (*CLASSES, "Contempt")
OVERRIDES = {"dataset": DATASET, "image_size": 64, "eval_batch_size": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, compilation_cache) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    make_dataset(root / "data")
    fx.make_class_folders(root / "manual8", {"train": "train", "test": "test"}, {str(k): k for k in range(8)}, ".png",
                          {"train": 1, "test": 2}, size=(40, 48))
    fx.build("image_folder/8", root / "data", root / "manual8")
    fx.make_class_folders(root / "manual_fed_ro", {"test": "."}, fx.FED_RO_FOLDERS, ".jpg", {"test": 1})
    fx.build("fed_ro", root / "data", root / "manual_fed_ro")
    return {"root": root, "data_dir": root / "data", "checkpoint": make_checkpoint(root / "checkpoint"),
            "env": environment(compilation_cache)}


def config_with(setup, **overrides):
    return load_config(str(REPO / "configs/demo.py"), [
        f"{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"], **overrides}.items()])


@pytest.mark.slow  # an evaluator process
def test_evaluator_reports_every_test_example_once(setup):
    overrides = [f"--config.{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"]}.items()]
    result = run([sys.executable, "-m", "manet_jax.evaluate", "--config", "configs/demo.py", *overrides,
                  "--checkpoint", str(setup["checkpoint"])], setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = setup["checkpoint"] / "eval" / "synthetic_faces_64_32_20_test"
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["split"], metrics["count"]) == (DATASET, "test", 20)
    for head in ("fused", "local", "global"):
        confusion = np.array(metrics[head]["confusion_matrix"])
        assert confusion.sum(1).tolist() == TEST_LABEL_COUNTS and metrics[head]["count"] == 20
        assert metrics[head]["accuracy"] == pytest.approx(np.trace(confusion) / 20)
        assert list(metrics[head]["recall"]) == list(CLASSES)
    assert np.isfinite(metrics["loss"])
    assert (report / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # an evaluator process
def test_cross_dataset_evaluation_in_one_command(setup, tmp_path):
    """A 7-class model on an 8-class dataset (Contempt left out), FED-RO and its own test split."""
    overrides = [f"--config.{key}={value}" for key, value in {**OVERRIDES, "data_dir": setup["data_dir"]}.items()]
    result = run([sys.executable, "-m", "manet_jax.evaluate", "--config", "configs/demo.py", *overrides,
                  f"--config.eval_dataset=image_folder/8,fed_ro,{DATASET}", "--checkpoint", str(setup["checkpoint"]),
                  "--output-dir", str(tmp_path / "reports")], setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"image_folder_8_test": (14, [2] * 7, {"Contempt": 2}), "fed_ro_test": (7, [1] * 7, None),
                "synthetic_faces_64_32_20_test": (20, TEST_LABEL_COUNTS, None)}
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(expected)
    for folder, (count, per_class, left_out) in expected.items():
        metrics = json.loads((tmp_path / "reports" / folder / "metrics.json").read_text())
        assert metrics["count"] == count and metrics.get("left_out") == left_out
        assert np.array(metrics["fused"]["confusion_matrix"]).sum(1).tolist() == per_class
        assert list(metrics["fused"]["recall"]) == list(CLASSES)
        assert re.search(rf"{metrics['dataset']}/test accuracy .*, n={count}", result.stderr)


def test_eval_sets_that_cannot_be_evaluated_are_named(setup):
    with pytest.raises(ConfigError, match=r"config.eval_dataset: 'fed_ro\+sfew' is not NAME or NAME:SPLIT"):
        config_with(setup, eval_dataset="fed_ro+sfew")
    with pytest.raises(DatasetNameError, match=r"fed_ro has no split 'validation' to evaluate; splits: \['test'\]"):
        evaluate_checkpoint(config_with(setup, eval_dataset="fed_ro:validation"), str(setup["checkpoint"]))
    with pytest.raises(ConfigError, match=r"fed_ro/test is evaluated twice"):
        evaluate_checkpoint(config_with(setup, eval_dataset="fed_ro,fed_ro:test"), str(setup["checkpoint"]))
    with pytest.raises(ConfigError, match=r"config.dataset: fed_ro has no train split; it is for evaluation only"):
        evaluate_checkpoint(config_with(setup, dataset="fed_ro"), str(setup["checkpoint"]))


@pytest.mark.slow  # two full-size random checkpoints written: about 6 s
def test_checkpoint_of_another_class_count_or_wiring_is_refused(setup, tmp_path):
    config = config_with(setup)
    checkpoint = make_checkpoint(tmp_path / "eight", num_classes=8)
    with pytest.raises(BundleError, match="8-way heads but synthetic_faces/64_32_20 has 7 classes"):
        evaluate_checkpoint(config, str(checkpoint))
    checkpoint = make_checkpoint(tmp_path / "wired", multiscale_wiring="2021")
    with pytest.raises(BundleError, match="2021 multi-scale wiring; evaluate it with --config.multiscale_wiring=2021"):
        evaluate_checkpoint(config, str(checkpoint))


def test_classification_metrics():
    labels = jnp.array([0, 0, 1, 1, 1, 2])
    predictions = jnp.array([0, 1, 1, 1, 0, 2])
    mask = jnp.array([1, 1, 1, 1, 1, 0])  # the last row is padding
    confusion = np.asarray(confusion_matrix(labels, predictions, 4, mask))
    assert confusion.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    metrics = classification_metrics(confusion, ["a", "b", "c", "d"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["recall"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": None, "d": None}
    assert metrics["mean_class_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)  # absent classes left out
    assert metrics["count"] == 5


# Evaluating any model on any dataset: classes matched by name, no config (issue 22).


def test_classes_are_matched_by_name():
    reordered = ("Anger", "Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust")
    assert match_classes(reordered, CLASSES, "raf_db") == (1, 2, 3, 4, 5, 6, 0)
    assert match_classes(EIGHT, CLASSES, "raf_db") == tuple(range(7))
    assert match_classes(CLASSES, EIGHT, "ferplus", leave_out=True) == (*range(7), LEFT_OUT)
    assert match_classes(CLASSES, EIGHT, "ferplus", {"Contempt": "Disgust"}) == (*range(7), 5)
    assert match_classes(CLASSES, EIGHT, "ferplus", {"Contempt": None}) == (*range(7), LEFT_OUT)
    assert match_classes(CLASSES, CLASSES, "raf_db", {"Fear": "Surprise", "Contempt": None}) == (0, 1, 2, 3, 3, 5, 6)
    with pytest.raises(ClassMapError, match=r"^ferplus: class Contempt has no counterpart among the model's classes "
                                            r"\(Neutral, .*, Anger\); say which it counts as with --class-map "
                                            r"Contempt=<model class>, or leave it out with --class-map Contempt=$"):
        match_classes(CLASSES, EIGHT, "ferplus")
    with pytest.raises(ClassMapError, match=r"^class map entries Contempt=Scorn name no class of the model"):
        match_classes(CLASSES, EIGHT, "ferplus", {"Contempt": "Scorn"})


def test_class_map_option(tmp_path):
    expected = {"Contempt": "Disgust", "Fear": None}
    assert parse_class_map("Contempt=Disgust, Fear=") == expected
    (tmp_path / "map.json").write_text('{"Contempt": "Disgust", "Fear": null}')
    assert parse_class_map(str(tmp_path / "map.json")) == expected
    (tmp_path / "list.json").write_text('["Contempt"]')
    for value, message in [("Contempt", r"--class-map: 'Contempt' is not DATASET_CLASS=MODEL_CLASS"),
                           ("Fear=Anger,Fear=", r"--class-map: Fear is mapped twice"),
                           (str(tmp_path / "none.json"), r"none.json: cannot be read as JSON"),
                           (str(tmp_path / "list.json"), r"list.json: must hold an object of class names")]:
        with pytest.raises(ConfigError, match=message):
            parse_class_map(value)


def test_dataset_option():
    assert parse_eval_sets("sfew, ferplus:test,fed_ro", "validation", "--dataset") == [
        ("sfew", "validation"), ("ferplus", "test"), ("fed_ro", "validation")]
    with pytest.raises(ConfigError, match=r"^--dataset: 'fed_ro\+sfew' is not NAME or NAME:SPLIT of one dataset"):
        parse_eval_sets("fed_ro+sfew", None, "--dataset")


def dataset_info(name: str, class_names: tuple[str, ...], counts: list[int]) -> DatasetInfo:
    """A dataset's info as `pipeline.dataset_info` describes it, without the data: a test split of `counts`."""
    return DatasetInfo(name=name, dataset_dirs=(), num_classes=len(class_names), class_names=class_names,
                       splits={"test": sum(counts)}, train_split=None, eval_split="test",
                       class_counts={"test": counts}, skipped_files={})


def test_eval_sets_count_what_they_evaluate():
    ferplus = dataset_info("ferplus", EIGHT, [1, 2, 3, 4, 5, 6, 7, 8])
    left_out = EvalSet(ferplus, "test", CLASSES, (*range(7), LEFT_OUT))
    assert (left_out.num_examples, left_out.left_out, left_out.restricted) == (28, {"Contempt": 8}, False)
    merged = EvalSet(ferplus, "test", CLASSES, (*range(7), 5))
    assert (merged.num_examples, merged.left_out, merged.restricted) == (36, {}, False)
    restricted = EvalSet(dataset_info("raf_db", CLASSES, [1] * 7), "test", EIGHT, tuple(range(7)))
    assert restricted.restricted and restricted.classes.tolist() == [True] * 7 + [False]


def test_eval_sets_that_cannot_be_evaluated_are_named_before_any_is():
    infos = {"ferplus": dataset_info("ferplus", EIGHT, [1] * 8),
             "fed_ro": dataset_info("fed_ro", CLASSES, [1] * 7), "sparse": dataset_info("sparse", EIGHT, [0] * 7 + [3])}

    def find(sets, class_map=None):
        return find_eval_sets(sets, CLASSES, None, "name each eval set once", lambda name, _: infos[name],
                              class_map=class_map)

    assert [s.name for s in find([("fed_ro", None), ("ferplus", None)], {"Contempt": None})] == [
        "fed_ro/test", "ferplus/test"]
    for sets, class_map, error, message in [
        ([("fed_ro", "validation")], None, DatasetNameError, r"fed_ro has no split 'validation' to evaluate"),
        ([("fed_ro", None), ("fed_ro", "test")], None, ConfigError,
         r"^fed_ro/test is evaluated twice; name each eval set once$"),
        ([("sparse", None)], {"Contempt": None}, ConfigError, r"sparse/test has no examples of the model's 7 classes"),
        ([("ferplus", None)], None, ClassMapError, r"^ferplus: class Contempt has no counterpart"),
        ([("fed_ro", None)], {"Scorn": "Anger"}, ClassMapError, r"^class map entries for Scorn: no eval set has such"),
    ]:
        with pytest.raises(error, match=message):
            find(sets, class_map)


def results_of(confusion: list[list[int]], class_names, unrestricted_accuracy=None) -> dict:
    """An eval set's results with `confusion` for every head (and, if given, the unrestricted accuracy)."""
    results = {head: classification_metrics(np.array(confusion), class_names) for head in HEADS}
    if unrestricted_accuracy is not None:
        for head in HEADS:
            results[head]["unrestricted_accuracy"] = unrestricted_accuracy
    return {**results, "count": results["fused"]["count"]}


def test_summary_table_across_sets(tmp_path):
    names = ("Neutral", "Happiness", "Contempt")
    restricted = [[2, 0, 0], [1, 1, 0], [0, 0, 0]]  # no Contempt in the set: predictions restricted
    results = {"raf_db/test": results_of(restricted, names, unrestricted_accuracy=0.5),
               "ferplus/test": results_of([[1, 0, 0], [0, 1, 0], [0, 1, 1]], names)}
    rows = summary_rows(results)
    assert [(row["set"], row["head"]) for row in rows] == [(s, h) for s in results for h in HEADS]
    assert rows[0] == {"set": "raf_db/test", "head": "fused", "accuracy": 0.75, "mean_class_accuracy": 0.75,
                       "unrestricted_accuracy": 0.5, "recall_Neutral": 1.0, "recall_Happiness": 0.5,
                       "recall_Contempt": None, "n": 4}
    assert rows[3]["unrestricted_accuracy"] is None
    assert format_summary(rows).splitlines()[:2] + format_summary(rows).splitlines()[4:5] == [
        "set           head    accuracy  mean class  unrestricted  Neutral  Happiness  Contempt  n",
        "raf_db/test   fused     75.00%      75.00%        50.00%  100.00%     50.00%         -  4",
        "ferplus/test  fused     75.00%      83.33%             -  100.00%    100.00%    50.00%  4"]
    write_summary(tmp_path / "summary.json", rows)
    assert json.loads((tmp_path / "summary.json").read_text()) == rows
    write_summary(tmp_path / "summary.csv", rows)
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(rows[0]) and len(table) == 6
    assert (table[0]["unrestricted_accuracy"], table[0]["recall_Contempt"], table[3]["unrestricted_accuracy"]) == (
        "0.5", "", "")


def test_the_command_line_is_checked_before_anything_runs(setup, tmp_path, capsys):
    checkpoint = ["--checkpoint", str(setup["checkpoint"])]
    for args, message in [
        ([], "name the eval sets with --dataset"),
        (["--dataset", "fed_ro", "--config.image_size=64"], "--config.KEY=VALUE needs --config"),
        (["--dataset", "fed_ro", "--summary", str(tmp_path / "summary.txt")], "unknown format; use a .json or .csv"),
        (["--dataset", "fed_ro", "--predictions", str(tmp_path / "none" / "p.csv")], "its folder does not exist"),
        (["--dataset", "fed_ro", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            evaluate_tool.main([*checkpoint, *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nonesuch"], r"error: unknown dataset 'nonesuch'; known: "),
    (["--dataset", "fed_ro:train"], r"error: fed_ro has no split 'train' to evaluate; splits: \['test'\]\n$"),
    (["--dataset", "raf_db"], r"error: dataset raf_db is not prepared in .*; prepare it with python -m "
                              r"manet_jax.data.prepare --dataset raf_db --manual-dir .* --data-dir .* \(the files: "
                              r"http://www.whdeng.cn/RAF/model1.html; run without them, it says which ones and where "
                              r"they go\)\n$"),
    (["--dataset", "fed_ro", "--checkpoint", "missing"], r"error: .*missing: does not exist\n$"),
    (["--dataset", f"{DATASET},image_folder/8"], r"error: image_folder/8: class Contempt has no counterpart among "
                                                  r"the model's classes \(Neutral, .*\); say which .*\n$"),
    (["--dataset", "fed_ro", "--class-map", "Contempt=Scorn"], r"error: class map entries Contempt=Scorn name no "),
], ids=["unknown dataset", "no such split", "not prepared", "no checkpoint", "unmatched class", "unknown map target"])
def test_what_cannot_be_evaluated_is_one_error_and_nothing_is_written(setup, tmp_path, capsys, args, message):
    code = evaluate_tool.main(["--checkpoint", str(setup["checkpoint"]), "--data-dir", str(setup["data_dir"]),
                               "--output-dir", str(tmp_path / "out"), "--summary", str(tmp_path / "summary.csv"),
                               *args])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: ") and error.count("error:") == 1 and re.search(message, error), error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_nothing_is_written_unless_every_set_is_evaluated(setup, tmp_path, monkeypatch):
    evaluated = []

    def evaluate_set(evaluator, variables, eval_set):  # the second set fails (a damaged file, say)
        if evaluated:
            raise OSError("damaged record")
        evaluated.append(eval_set.name)
        return SetEvaluation(eval_set, results_of(np.eye(7, dtype=int), CLASSES))

    monkeypatch.setattr(evaluation, "evaluate_set", evaluate_set)
    with pytest.raises(OSError, match="damaged record"):
        evaluate_bundle(str(setup["checkpoint"]), [("fed_ro", None), (DATASET, None)], str(tmp_path / "out"),
                        data_dir=str(setup["data_dir"]), batch_size=8, summary=str(tmp_path / "summary.json"))
    assert evaluated == ["fed_ro/test"] and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def evaluator(setup) -> Evaluator:
    """The evaluator of 7-class models at 64x64 in batches of 8, with per-example predictions: its
    step compiles once for the module."""
    mesh = make_mesh()
    spec = ModelSpec(CLASSES, image_size=64)
    return Evaluator(module_for(spec, mesh), spec.beta, mesh, spec.image_size, 8, str(setup["data_dir"]),
                     predictions=True)


@pytest.mark.slow
def test_a_model_of_another_class_order_is_evaluated_by_class_name(setup, evaluator, tmp_path):
    """The test model and the same weights with the classes in another order give the same predictions
    by name; image_folder/8's Contempt images count as Disgust (--class-map), its own class listed
    as `counted_as`. The predictions CSV holds each image once, the confusion matrix's counts."""
    canonical = load_bundle(setup["checkpoint"])
    order = [6, 0, 1, 2, 3, 4, 5]  # the reordered model's class k is the test model's class order[k]
    variables = {"params": dict(canonical.variables["params"]), "batch_stats": canonical.variables["batch_stats"]}
    for head in ("fc_1", "fc_2"):
        fc = canonical.variables["params"][head]
        variables["params"][head] = {"kernel": fc["kernel"][:, order], "bias": fc["bias"][order]}
    names = tuple(CLASSES[k] for k in order)
    reordered = load_bundle(save_bundle(tmp_path / "reordered", variables, ModelSpec(names, image_size=64)))
    sets, class_map = [("fed_ro", None), ("image_folder/8", None)], {"Contempt": "Disgust"}
    runs = {}
    for name, bundle in (("canonical", canonical), ("reordered", reordered)):
        found = find_eval_sets(sets, bundle.spec.class_names, evaluator.data_dir, "", class_map=class_map)
        runs[name] = evaluate_model(evaluator, bundle, found, name)
    for ours, theirs in zip(runs["reordered"], runs["canonical"]):
        for head in HEADS:
            np.testing.assert_array_equal(np.array(ours.results[head]["confusion_matrix"]),
                                          np.array(theirs.results[head]["confusion_matrix"])[np.ix_(order, order)])
            assert ours.results[head]["recall"] == {c: theirs.results[head]["recall"][c] for c in names}
        np.testing.assert_allclose(ours.predictions.probabilities, theirs.predictions.probabilities[:, order],
                                   rtol=1e-5, atol=1e-6)
        assert [names[k] for k in ours.predictions.prediction] == [CLASSES[k] for k in theirs.predictions.prediction]
    fed_ro, folder8 = (e.results for e in runs["reordered"])
    assert "counted_as" not in fed_ro and "left_out" not in fed_ro and "unrestricted_accuracy" not in fed_ro["fused"]
    assert folder8["counted_as"] == {"Contempt": "Disgust"} and folder8["count"] == 16
    assert dict(zip(names, np.array(folder8["fused"]["confusion_matrix"]).sum(1))) == {
        **dict.fromkeys(names, 2), "Disgust": 4}
    write_outputs(runs["reordered"], tmp_path / "reports", evaluator.data_dir, predictions=str(tmp_path / "p.csv"))
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["fed_ro_test", "image_folder_8_test"]
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["set", "index", "file_name", "label", "prediction", *(f"fused_{c}" for c in names)]
    folder_rows = [row for row in rows if row["set"] == "image_folder/8/test"]
    assert [row["index"] for row in folder_rows] == [str(i) for i in range(16)]
    assert {row["file_name"]: row["label"] for row in folder_rows if row["file_name"].startswith("test/7/")} == {
        "test/7/0000.png": "Disgust", "test/7/0001.png": "Disgust"}
    confusion = np.zeros((7, 7), int)
    for row in folder_rows:
        confusion[names.index(row["label"]), names.index(row["prediction"])] += 1
        assert sum(float(row[f"fused_{c}"]) for c in names) == pytest.approx(1, abs=1e-5)
    assert confusion.tolist() == folder8["fused"]["confusion_matrix"]


@pytest.mark.slow
def test_an_eight_class_model_on_other_datasets_without_a_config(setup, tmp_path):
    """The tool end to end with no config and no other dataset on disk: an 8-class model converted
    by `convert to-flax` from a reference state_dict, on FED-RO and a generated set, both of 7 classes: predictions
    restricted to them, the unrestricted accuracy reported; the summary table printed and written,
    the predictions written, the reports in <checkpoint>/eval."""
    data_dir = tmp_path / "data"
    fx.make_class_folders(tmp_path / "manual", {"test": "."}, fx.FED_RO_FOLDERS, ".jpg", {"test": 1})
    fx.build("fed_ro", data_dir, tmp_path / "manual")
    weights = save_state_dict_file(flax_to_torch(random_variables(8)), tmp_path / "affectnet8.npz")
    checkpoint = tmp_path / "eight"
    assert convert_main(["to-flax", str(weights), str(checkpoint), "--image-size", "64"]) == 0
    assert load_bundle(checkpoint).spec.class_names == EIGHT
    result = run([sys.executable, "-m", "manet_jax.evaluate", "--checkpoint", str(checkpoint), "--dataset",
                  f"fed_ro,{DATASET}", "--data-dir", str(data_dir), "--batch-size", "8", "--summary",
                  str(tmp_path / "summary.csv"), "--predictions", str(tmp_path / "predictions.csv")], setup["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    on_disk = {p.name for p in data_dir.iterdir() if not p.name.startswith(".")} - {"downloads"}
    assert sorted(on_disk) == ["fed_ro", "synthetic_faces"]
    counts = {"fed_ro_test": [1] * 7, "synthetic_faces_64_32_20_test": TEST_LABEL_COUNTS}
    assert sorted(p.name for p in (checkpoint / "eval").iterdir()) == sorted(counts)
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 27 and all(row["prediction"] != "Contempt" for row in rows)
    for row in rows:
        probabilities = [float(row[f"fused_{c}"]) for c in EIGHT]
        assert row["prediction"] == CLASSES[int(np.argmax(probabilities[:7]))]
        row["unrestricted"] = EIGHT[int(np.argmax(probabilities))]
    for folder, per_class in counts.items():
        metrics = json.loads((checkpoint / "eval" / folder / "metrics.json").read_text())
        fused = np.array(metrics["fused"]["confusion_matrix"])
        assert fused.sum(1).tolist() == [*per_class, 0] and not fused[:, 7].any()  # never Contempt
        assert metrics["fused"]["recall"]["Contempt"] is None and metrics["count"] == sum(per_class)
        hits = [row["unrestricted"] == row["label"] for row in rows if row["set"] == f"{metrics['dataset']}/test"]
        assert metrics["fused"]["unrestricted_accuracy"] == pytest.approx(np.mean(hits))
        assert re.search(rf"{metrics['dataset']}/test accuracy .*, unrestricted "
                         rf"{metrics['fused']['unrestricted_accuracy']:.2%}\), loss", result.stderr)
    with open(tmp_path / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [(row["set"], row["head"]) for row in summary] == [
        (s, h) for s in ("fed_ro/test", f"{DATASET}/test") for h in HEADS]
    assert all(row["unrestricted_accuracy"] and row["recall_Contempt"] == "" for row in summary)
    header, *lines = result.stdout.splitlines()  # stdout is the table (TFDS's messages go to stderr)
    assert header.split()[:6] == ["set", "head", "accuracy", "mean", "class", "unrestricted"] and len(lines) == 6


@pytest.mark.slow  # the module's fixture
def test_outputs_that_cannot_be_written_are_named_before_the_evaluation(setup, tmp_path, capsys):
    (tmp_path / "file").write_text("notes")
    args = ["--checkpoint", str(setup["checkpoint"]), "--dataset", DATASET, "--data-dir", str(setup["data_dir"])]
    report = f"{DATASET.replace('/', '_')}_test/metrics.json"
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        read_only = rf"cannot be written: {ro} is read-only \(a read-only file system or no write permission\)"
        cases = [(["--output-dir", str(tmp_path / "file")],
                  f"{tmp_path / 'file' / report}: lies beneath the file {tmp_path / 'file'}, not in a directory"),
                 (["--output-dir", str(ro)], f"{ro / report}: {read_only}"),
                 (["--output-dir", str(tmp_path / "reports"), "--summary", str(ro / "s.json")],
                  f"--summary {ro / 's.json'}: {read_only}")]
        for options, message in cases:
            assert evaluate_tool.main([*args, *options]) == 2
            err = capsys.readouterr().err
            assert re.fullmatch(f"error: {message}\n", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]
