"""The official MA-Net training curves (`training.official`): the shipped numbers, the rule that
ties a config to a curve, the trainer's comparison and `manet_jax.report --official`."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import pytest
from official_runs import REPO, example_runs, fabricate
from train_helpers import tmpfs

from manet_jax.report import main as report
from manet_jax.reporting import official_table
from manet_jax.training.config import load_config
from manet_jax.training.official import CURVES_FILE, curves, matching_curve, parse_log, recipe_differences
from manet_jax.training.record import Reporter, RunSummary, official_text

# The paper's numbers (abstract; FED-RO from its log) and the best epochs (docs/training.md's table).
PAPER = {"RAF-DB": (100, 88.40, 30), "AffectNet7": (20, 64.53, 7), "AffectNet8": (20, 60.29, 9),
         "CAER-S": (400, 88.42, 399), "SFEW": (100, 59.40, 41), "FED-RO": (20, 70.00, 9)}
CONFIGS = {"RAF-DB": "configs/raf.py", "AffectNet7": "configs/affectnet7.py", "AffectNet8": "configs/affectnet8.py",
           "CAER-S": "configs/caer_s.py", "SFEW": "configs/sfew.py", "FED-RO": "configs/fed_ro.py"}


def test_each_log_has_the_papers_epochs_and_best_accuracy():
    found = {name: (c.epochs, round(100 * c.best()[1], 2), c.best()[0]) for name, c in curves().items()}
    assert found == PAPER
    raf = curves()["RAF-DB"]  # the log's first two epochs, as the issue quotes them
    assert raf.test_accuracy[:2] == (0.71871, 0.77705) and raf.train_loss[0] == 1.2422
    assert (raf.learning_rate[14], raf.learning_rate[15]) == (0.01, 0.001)
    for c in curves().values():
        assert len(c.learning_rate) == len(c.train_loss) == len(c.train_accuracy) == c.epochs
    source = json.loads(CURVES_FILE.read_text())["source"]
    assert source["commit"] == "923fa6cf5ae41e00afc7d9d45f39273a25c44b70"
    assert curves()["SFEW"].source == "github.com/zengqunzhao/MA-Net@923fa6c log/SFEW.txt"


LOG = """Current learning rate: 0.1
Epoch: [0][ 0/20]\tLoss 2.0000 (2.0000)\tAccuracy 10.000 (10.000)
Epoch: [0][10/20]\tLoss 1.5000 (1.7500)\tAccuracy 30.000 (20.000)
Test: [ 0/2]\tLoss 1.0 (1.0)\tAccuracy 40.000 (40.000)
 * Accuracy 41.500
Current best accuracy: 41.5
12.5
Current learning rate: 0.05
Epoch: [1][ 0/20]\tLoss 1.2500 (1.2500)\tAccuracy 50.000 (50.000)
 * Accuracy 45.250
Current best accuracy: 45.25
"""


def test_a_log_parses_to_its_columns_and_a_log_out_of_order_is_named():
    assert parse_log(LOG, "log/X.txt") == {"learning_rate": [0.1, 0.05], "train_loss": [1.75, 1.25],
                                           "train_accuracy": [20.0, 50.0], "test_accuracy": [41.5, 45.25]}
    with pytest.raises(ValueError, match=r"^log/X.txt:7: a second learning rate in epoch 0$"):
        parse_log(LOG.replace(" * Accuracy 41.500\n", ""), "log/X.txt")
    with pytest.raises(ValueError, match=r"^log/X.txt:7: epoch 1 where epoch 0 was expected, after its learning rate$"):
        parse_log(LOG.replace(" * Accuracy 41.500\n", "").replace("Current learning rate: 0.05\n", ""), "log/X.txt")
    with pytest.raises(ValueError, match="^log/X.txt: no complete epoch"):
        parse_log(LOG.rsplit(" * Accuracy", 1)[0], "log/X.txt")


def config(path: str, *overrides: str):
    return load_config(str(REPO / path), overrides)


def test_each_paper_config_follows_its_curve_and_the_others_none():
    assert {name: c.config for name, c in curves().items()} == CONFIGS
    for name, path in CONFIGS.items():
        assert matching_curve(config(path)).name == name
    for path in ("configs/demo.py", "configs/raf_scratch.py", "configs/fer2013.py", "configs/ferplus.py"):
        assert matching_curve(config(path)) is None, path
    # the weights file elsewhere is the same initialisation; further eval sets change no epoch
    assert matching_curve(config("configs/raf.py", "init_from=/data/Pretrained_on_MSCeleb.pth.tar")).name == "RAF-DB"
    assert matching_curve(config("configs/raf.py", "eval_dataset=raf_db,sfew")).name == "RAF-DB"


@pytest.mark.parametrize("override, difference", [
    ("batch_size=64", "batch_size: 64, official 128"),
    ("lr_step_epochs=10", "learning rate: 0.01 for 10 epochs, 0.001 for 10, "),
    ("learning_rate=0.02", "learning rate: 0.02 for 15 epochs, "),
    ("lr_schedule=cosine", "learning rate: lr_schedule 'cosine', official 0.01 for 15 epochs"),
    ("num_epochs=50", "num_epochs: 50, official 100"),
    ("init_from=", "init_from: '', official 'weights/Pretrained_on_MSCeleb.pth.tar'"),
    ("input.balanced_sampling=true", "input.balanced_sampling: True, official False"),
    ("eval_split=train", "first eval set: raf_db:train, official raf_db (its test split)"),
    ("eval_dataset=sfew,raf_db", "first eval set: sfew (its test split), official raf_db (its test split)"),
])
def test_a_changed_batch_size_schedule_or_initialisation_turns_the_comparison_off(override, difference):
    changed = config("configs/raf.py", override)
    assert matching_curve(changed) is None
    (found,) = recipe_differences(changed, curves()["RAF-DB"])
    assert found.startswith(difference)


def results(accuracy: float) -> dict:
    return {"raf_db/test": {"fused": {"accuracy": accuracy}}}


def test_the_summary_keeps_each_epoch_beside_the_official_one_and_resumes_it(tmp_path):
    curve = curves()["RAF-DB"]
    summary = RunSummary("raf_db/test", tmp_path / "summary.json", curve=curve)
    summary.add_evaluation(1, 96, results(0.70))
    summary.add_evaluation(2, 192, results(0.60))
    first, second = summary.to_json()["official"]["epochs"]
    assert first["official"] == 0.71871 and first["gap"] == pytest.approx(-0.01871)
    assert first["swing"] == pytest.approx(0.77705 - 0.71871) and first["verdict"] == "on track"
    assert second["gap"] == pytest.approx(-0.17705) and second["verdict"] == "behind"
    assert official_text(summary, 2) == "; official RAF-DB 77.70% (gap -17.71 points, behind)"
    summary.write()
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["official"] == {"curve": "RAF-DB", "source": curve.source, "epochs": [first, second]}
    resumed = RunSummary("raf_db/test", tmp_path / "summary.json", curve=curve)
    resumed.resume(json.loads(json.dumps(summary.host_state())), "raf_db", tmp_path)
    resumed.add_evaluation(3, 288, results(0.80))
    assert [e["epoch"] for e in resumed.to_json()["official"]["epochs"]] == [1, 2, 3]
    assert curve.compare(101, 0.9) is None  # past the official run's end


def test_a_run_of_no_official_recipe_says_nothing(tmp_path):
    demo = matching_curve(config("configs/demo.py"))
    summary = RunSummary("synthetic_faces/test", tmp_path / "summary.json", curve=demo)
    summary.add_evaluation(1, 4, {"synthetic_faces/test": {"fused": {"accuracy": 0.5}}})
    assert "official" not in summary.to_json() and official_text(summary, 1) == ""


def test_verdicts_of_runs_on_above_and_below_the_curve_and_a_learning_rate_named(tmp_path):
    official = curves()["RAF-DB"].test_accuracy
    runs = [fabricate(tmp_path / "on", official[:5]),
            fabricate(tmp_path / "above", [a + 0.07 for a in official[:5]]),
            fabricate(tmp_path / "below", [a - (0.07 if e >= 3 else 0) for e, a in enumerate(official[:5])]),
            fabricate(tmp_path / "lr", official[:3], overrides=["learning_rate=0.005"])]
    table = official_table([str(r) for r in runs], "raf_db/test")
    verdicts = {r["run"].rsplit("/", 1)[1]: [e["verdict"] for e in r["epochs"]] for r in table["runs"]}
    assert verdicts == {"on": ["on track"] * 5, "above": ["ahead"] * 5, "below": ["on track"] * 3 + ["behind"] * 2,
                        "lr": ["on track"] * 3}
    on, above, below, lr = table["runs"]
    assert below["verdict"] == {"epoch": 5, "verdict": "behind", "gap": pytest.approx(-0.07)}
    assert on["learning_rate_differs"] is None and on["recipe_differences"] == []
    assert lr["learning_rate_differs"] == {"epoch": 1, "run": 0.005, "official": 0.01}
    assert lr["recipe_differences"][0].startswith("learning rate: 0.005 for 15 epochs")
    assert [e["train_loss"] for e in on["epochs"]] == list(curves()["RAF-DB"].train_loss[:5])


def test_the_report_draws_the_runs_over_the_official_curve(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = [str(run) for run in example_runs(tmp_path / "runs")]
    figure = tmp_path / "curves.png"
    assert report([*runs, "--official", str(figure), "--json", "r.json", "--markdown", "r.md"]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
    table = json.loads((tmp_path / "r.json").read_text())["official"]
    assert [r["verdict"]["verdict"] for r in table["runs"]] == ["on track", "behind", "on track"]
    assert len(table["curves"]["RAF-DB"]["epochs"]) == 100 and table["figure"] == str(figure)
    markdown = (tmp_path / "r.md").read_text()
    assert "![the runs over the official curves](curves.png)" in markdown  # beside r.md
    assert f"- {runs[1]} against RAF-DB: behind at epoch 8 (gap -7.00 points)" in markdown
    assert f"- {runs[2]} against RAF-DB: on track at epoch 8 (gap -1.00 points)\n" \
           "  - learning rate differs from epoch 1: 0.02, official 0.01" in markdown
    assert ("| 4 | 83.54 | 6.62 | 83.94 (+0.40, on track) | 76.54 (-7.00, behind) | 82.54 (-1.00, on track) |"
            in markdown)
    assert markdown in capsys.readouterr().out
    assert report(["--official", *runs]) == 2  # the first run taken for the figure
    assert capsys.readouterr().err == (f"error: --official {runs[0]}: name the figure's .png file (or put "
                                       "--official after the runs, for official_curves.png)\n")


def test_the_report_names_an_output_it_cannot_write_before_reading_the_runs(tmp_path, capsys):
    (tmp_path / "file").write_text("notes")
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        cases = {("--json", read_only / "t.json"): rf"cannot be written: {read_only} is read-only \(a read-only file "
                                                   r"system or no write permission\)",
                 ("--official", tmp_path / "file" / "c.png"): f"lies beneath the file {tmp_path / 'file'}, not in a "
                                                              "directory"}
        for (option, path), problem in cases.items():
            assert report([str(tmp_path / "no_run"), option, str(path)]) == 2
            err = capsys.readouterr().err
            assert re.fullmatch(rf"error: {option} {re.escape(str(path))}: {problem}\n", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]


def test_the_report_refuses_a_run_without_an_official_curve(tmp_path, capsys):
    run = fabricate(tmp_path / "fer", [0.5], config="configs/fer2013.py")
    assert report([str(run), "--official"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {run}: no official curve for dataset 'fer2013' evaluated on "
                                              "fer2013 (its test split) (--official compares runs of configs/raf.py, ")



class Writer:
    """MetricWriter's interface, keeping the records."""

    def __init__(self):
        self.records = []

    def write(self, record: dict) -> None:
        self.records.append(record)

    def write_figure(self, tag: str, figure, step: int) -> None:
        pass


def eval_results(accuracy: float) -> dict:
    confusion = [[round(100 * accuracy), 100 - round(100 * accuracy)], [0, 0]]
    return {"raf_db/test": {"loss": 0.5, "count": 100,
                            "local": {"accuracy": accuracy}, "global": {"accuracy": accuracy},
                            "fused": {"accuracy": accuracy, "mean_class_accuracy": accuracy,
                                      "confusion_matrix": confusion}}}


@pytest.mark.parametrize("path", ["configs/raf.py", "configs/raf_scratch.py"])
def test_the_trainers_epoch_line_gives_the_official_accuracy_and_the_gap_only_for_its_recipe(path, tmp_path, caplog):
    run_config = config(path)
    setup = SimpleNamespace(config=run_config, total_steps=96 * run_config.num_epochs, steps_per_epoch=96,
                            info=SimpleNamespace(class_names=["Neutral", "Happiness"]))
    summary = RunSummary("raf_db/test", tmp_path / "summary.json", curve=matching_curve(run_config))
    reporter = Reporter(setup, Writer())
    summary.add_evaluation(4, 384, eval_results(0.85))
    with caplog.at_level(logging.INFO, logger="manet_jax.training.record"):
        reporter.epoch(4, 384, [{"loss": 0.7, "loss_local": 0.7, "loss_global": 0.7, "correct": 96}], summary)
    (line,) = caplog.messages
    official = "; official RAF-DB 83.54% (gap +1.46 points, on track)" if path == "configs/raf.py" else ""
    assert line.endswith(f"; train accuracy 75.00%; best 85.00% at epoch 4{official}")
    written = json.loads((tmp_path / "summary.json").read_text())
    assert ("official" in written) == bool(official)
