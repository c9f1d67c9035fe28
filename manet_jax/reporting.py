"""What `python -m manet_jax.report` makes of several runs' workdirs: the spread of one recipe's
results over its runs, and each run beside the official curve of its dataset.

`spreads(runs)` takes the summaries of trainer workdirs (`training.workdir.read_summary`) and
returns a JSON-ready table of the mean, standard deviation, minimum and maximum of each metric, at
the best and at the last epoch; `spreads_markdown(table)` writes it for people. The standard
deviation is the sample one (ddof 1; 0 for a single run). Like the summaries, it holds no arrays
and needs no JAX.

`official_table(workdirs, ranked_by, figure)` reads each run's `config.json` and the epoch records
of its `metrics.jsonl` and returns per epoch the test accuracy and train loss of each run over the
official run's, a verdict per epoch and the learning rates that differ from the official ones;
`official_markdown(table)` writes it for people and `draw(table, path)` writes the PNG. The curve
of a run is the one of its dataset and eval set (`official.curve_of_dataset`), followed or not:
the recipe's differences are listed beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from manet_jax.errors import ManetError
from manet_jax.training.official import (LR_TOLERANCE, Curve, curve_of_dataset, curves, describe_rates, eval_set_text,
                                         recipe_differences)
from manet_jax.training.workdir import CONFIG_FILE, read_summary


METRICS = ("accuracy", "mean_class_accuracy")
ENTRIES = ("best", "last")


class RunsError(ManetError, ValueError):
    """Runs that cannot be reported together; the message names the run at fault."""


def spread(values: Sequence[float]) -> dict[str, Any]:
    """{'mean', 'std' (sample), 'min', 'max', 'values'} of `values`."""
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "values": [float(v) for v in array]}


def spreads(workdirs: Sequence[str]) -> dict[str, Any]:
    """The table of the runs in `workdirs`: for the best and the last entry, per eval set and head,
    the spread of accuracy, mean class accuracy and recall per class; plus the epochs the entries
    come from and the config keys in which the runs differ."""
    if not workdirs:
        raise RunsError("no runs to report")
    summaries = [read_summary(workdir) for workdir in workdirs]
    first = summaries[0]
    for workdir, summary in zip(workdirs, summaries):
        if summary["best"] is None:
            raise RunsError(f"{workdir}: no epoch evaluated yet")
        if (summary["ranked_by"], list(summary["best"]["eval"])) != (first["ranked_by"], list(first["best"]["eval"])):
            raise RunsError(f"{workdir} evaluated {list(summary['best']['eval'])} (ranked by {summary['ranked_by']}), "
                            f"{workdirs[0]} {list(first['best']['eval'])} (ranked by {first['ranked_by']}); report "
                            "runs of one recipe together")
    table: dict[str, Any] = {"runs": list(workdirs), "ranked_by": first["ranked_by"],
                             "config_differences": _config_differences(workdirs)}
    for key in ENTRIES:
        entries = [summary[key] for summary in summaries]
        table[key] = {"epochs": [entry["epoch"] for entry in entries], "eval": {
            name: {head: _head_spread([entry["eval"][name][head] for entry in entries], workdirs, name)
                   for head in heads(results)}
            for name, results in first[key]["eval"].items()}}
    return table


def heads(results: dict[str, Any]) -> list[str]:
    """The heads of an eval set's results (fused, local, global): the entries with an accuracy."""
    return [key for key, value in results.items() if isinstance(value, dict) and "accuracy" in value]


def _head_spread(results: list[dict[str, Any]], workdirs: Sequence[str], name: str) -> dict[str, Any]:
    classes = list(results[0]["recall"])
    for workdir, head in zip(workdirs, results):
        if list(head["recall"]) != classes:
            raise RunsError(f"{workdir}: {name} has classes {list(head['recall'])}, {workdirs[0]} {classes}")
    recall = {c: spread([r["recall"][c] for r in results]) for c in classes
              if all(r["recall"][c] is not None for r in results)}  # absent from the eval set: no recall
    return {**{metric: spread([r[metric] for r in results]) for metric in METRICS}, "recall": recall}


def _config_differences(workdirs: Sequence[str]) -> dict[str, list[Any]]:
    """{key: value per run} of the config keys (nested ones dotted) that differ between the runs."""
    configs = []
    for workdir in workdirs:
        try:
            configs.append(_flat(json.loads((epath.Path(workdir) / CONFIG_FILE).read_text())))
        except (OSError, ValueError) as e:
            raise RunsError(f"{workdir}: cannot read its {CONFIG_FILE} ({e})") from e
    keys = sorted(set().union(*configs))
    return {key: [c.get(key) for c in configs] for key in keys if len({json.dumps(c.get(key)) for c in configs}) > 1}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def spreads_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: per entry and eval set, the heads' accuracies, then recall per class,
    each cell `mean ± std (min–max)` in %."""
    runs = table["runs"]
    lines = [f"# {len(runs)} run{'s' * (len(runs) > 1)}: {', '.join(runs)}", "",
             f"Best epoch by fused accuracy on {table['ranked_by']} (the first eval set; the earlier epoch on ties). "
             "Cells: mean ± sample standard deviation (min–max) over the runs, in %."]
    if table["config_differences"]:
        lines += ["", "The runs' configs differ in: " + "; ".join(
            f"{key} {', '.join(json.dumps(v) for v in values)}" for key, values in table["config_differences"].items())]
    for key in ENTRIES:
        entry = table[key]
        lines += ["", f"## {key.capitalize()} epoch (per run: {', '.join(str(e) for e in entry['epochs'])})"]
        for name, by_head in entry["eval"].items():
            lines += ["", f"### {name}", "", "| head | accuracy | mean class accuracy |", "|---|---|---|"]
            lines += [f"| {head} | {_cell(s['accuracy'])} | {_cell(s['mean_class_accuracy'])} |"
                      for head, s in by_head.items()]
            lines += ["", "| recall | " + " | ".join(by_head) + " |", "|---" * (len(by_head) + 1) + "|"]
            lines += [f"| {c} | " + " | ".join(_cell(s["recall"][c]) for s in by_head.values()) + " |"
                      for c in next(iter(by_head.values()))["recall"]]
    return "\n".join(lines) + "\n"


def _cell(s: dict[str, float]) -> str:
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} ({100 * s['min']:.2f}–{100 * s['max']:.2f})"


METRICS_FILE = "metrics.jsonl"  # training.record.METRICS_FILE, without importing TensorFlow
SHOWN_AHEAD = 5  # official epochs drawn past the runs' last


def run_epochs(workdir: str, ranked_by: str) -> list[dict[str, Any]]:
    """Per epoch of the run in `workdir`, from the epoch records of its metrics.jsonl: `epoch`,
    `train_loss`, `train_accuracy`, `learning_rate` (of the epoch's last step) and, where it was
    evaluated, `test_accuracy` (fused, on `ranked_by`). A last line cut short is left out."""
    path = epath.Path(workdir) / METRICS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise RunsError(f"{path}: cannot be read ({e})") from e
    rates, epochs = {}, {}
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            if number == len(lines):
                break
            raise RunsError(f"{path}: line {number} is not a metric record ({e})") from e
        if "learning_rate" in record:
            rates[record["step"]] = record["learning_rate"]
        if "train_epoch" in record:
            evaluation = record.get("eval", {}).get(ranked_by)
            epochs[record["epoch"]] = {
                "epoch": record["epoch"], "train_loss": record["train_epoch"]["loss"],
                "train_accuracy": record["train_epoch"]["accuracy"], "learning_rate": rates.get(record["step"]),
                "test_accuracy": evaluation and evaluation["fused"]["accuracy"]}
    return [epochs[epoch] for epoch in sorted(epochs)]


def official_table(workdirs: Sequence[str], ranked_by: str, figure: str | None = None) -> dict[str, Any]:
    """Each run of `workdirs` beside its dataset's official curve: its epochs, each evaluated one
    compared (`Curve.compare`), its verdict (that of its last compared epoch), the differences of
    its config from the official recipe and the first epoch whose learning rate differs; the
    curves themselves; and the figure's path, if one is drawn."""
    runs, used = [], {}
    for workdir in workdirs:
        try:
            config = json.loads((epath.Path(workdir) / CONFIG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise RunsError(f"{workdir}: cannot read its {CONFIG_FILE} ({e})") from e
        curve = curve_of_dataset(config)
        if curve is None:
            raise RunsError(f"{workdir}: no official curve for dataset {config.get('dataset')!r} evaluated on "
                            f"{eval_set_text(config)} (--official compares runs of "
                            f"{', '.join(c.config for c in curves().values())})")
        used[curve.name] = curve
        epochs = run_epochs(workdir, ranked_by)
        for epoch in epochs:
            beside = epoch["test_accuracy"] is not None and curve.compare(epoch["epoch"], epoch["test_accuracy"])
            if beside:
                epoch.update({key: beside[key] for key in ("official", "gap", "swing", "verdict")})
        compared = [e for e in epochs if "verdict" in e]
        runs.append({"run": workdir, "curve": curve.name, "recipe_differences": recipe_differences(config, curve),
                     "learning_rate_differs": _first_other_rate(epochs, curve),
                     "verdict": {key: compared[-1][key] for key in ("epoch", "verdict", "gap")} if compared else None,
                     "epochs": epochs})
    return {"runs": runs, "figure": figure, "curves": {name: {
        "source": c.source, "config": c.config, "schedule": describe_rates(c.learning_rate),
        "epochs": [{"epoch": e + 1, "learning_rate": c.learning_rate[e], "train_loss": c.train_loss[e],
                    "train_accuracy": c.train_accuracy[e], "test_accuracy": c.test_accuracy[e],
                    "swing": c.swing(e + 1)} for e in range(c.epochs)]} for name, c in used.items()}}


def _first_other_rate(epochs: list[dict[str, Any]], curve: Curve) -> dict[str, Any] | None:
    """{'epoch', 'run', 'official'} of the first epoch whose learning rate is not the official one."""
    for epoch in epochs:
        e, rate = epoch["epoch"], epoch["learning_rate"]
        official = curve.learning_rate[e - 1] if e <= curve.epochs else None
        if rate is not None and (official is None or not math.isclose(rate, official, rel_tol=LR_TOLERANCE)):
            return {"epoch": e, "run": rate, "official": official}
    return None


def official_markdown(table: dict[str, Any], figure_link: str | None = None) -> str:
    """The figure (at `figure_link`, if given), the verdicts, the differences from the official
    recipes and, per curve, the compared epochs: the official test accuracy and swing, each run's
    accuracy and gap, in %."""
    lines = ["", "## Beside the official curves", ""]
    if figure_link:
        lines += [f"![the runs over the official curves]({figure_link})", ""]
    lines += ["A run is behind (ahead) at an epoch when its test accuracy is lower (higher) than the official "
              "run's by more than the official run's own swing there: the largest change of its test accuracy "
              "between consecutive epochs within two epochs of it.", ""]
    for run in table["runs"]:
        verdict = run["verdict"]
        text = (f"{verdict['verdict']} at epoch {verdict['epoch']} (gap {100 * verdict['gap']:+.2f} points)"
                if verdict else "no epoch compared yet")
        lines.append(f"- {run['run']} against {run['curve']}: {text}")
        other = run["learning_rate_differs"]
        if other:
            official = "none (past the official run's end)" if other["official"] is None else f"{other['official']:.3g}"
            lines.append(f"  - learning rate differs from epoch {other['epoch']}: {other['run']:.3g}, "
                         f"official {official}")
        if run["recipe_differences"]:
            lines.append(f"  - not the official recipe: {'; '.join(run['recipe_differences'])}")
    for name, curve in table["curves"].items():
        runs = [run for run in table["runs"] if run["curve"] == name]
        by_epoch = [{e["epoch"]: e for e in run["epochs"] if "verdict" in e} for run in runs]
        compared = sorted(set().union(*by_epoch))
        lines += ["", f"### {name} ({curve['source']}; {curve['config']}: {curve['schedule']})", "",
                  "| epoch | official | swing | " + " | ".join(run["run"] for run in runs) + " |",
                  "|---" * (3 + len(runs)) + "|"]
        for epoch in compared:
            official = curve["epochs"][epoch - 1]
            cells = [f"{100 * e['test_accuracy']:.2f} ({100 * e['gap']:+.2f}, {e['verdict']})" if e else ""
                     for e in (epochs.get(epoch) for epochs in by_epoch)]
            lines.append(f"| {epoch} | {100 * official['test_accuracy']:.2f} | {100 * official['swing']:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw(table: dict[str, Any], path: epath.PathLike) -> None:
    """Writes a PNG to `path`: per curve, the test accuracy (the official run's, with its swing
    shaded, and each run's) and the train loss per epoch, up to SHOWN_AHEAD epochs past the runs'."""
    names = list(table["curves"])
    figure = Figure(figsize=(11, 3.6 * len(names)), layout="constrained")
    for row, name in enumerate(names):
        curve = table["curves"][name]
        runs = [run for run in table["runs"] if run["curve"] == name]
        last = max((e["epoch"] for run in runs for e in run["epochs"]), default=0)
        shown = curve["epochs"][:last + SHOWN_AHEAD]  # and a few epochs of where the official run went next
        x = [e["epoch"] for e in shown]
        accuracy, loss = figure.add_subplot(len(names), 2, 2 * row + 1), figure.add_subplot(len(names), 2, 2 * row + 2)
        official = [100 * e["test_accuracy"] for e in shown]
        swing = [100 * e["swing"] for e in shown]
        accuracy.fill_between(x, [a - s for a, s in zip(official, swing)], [a + s for a, s in zip(official, swing)],
                              color="0.85", label="official ± its swing (on track)")
        accuracy.plot(x, official, color="black", label=f"official {name}")
        loss.plot(x, [e["train_loss"] for e in shown], color="black", label=f"official {name}")
        for run in runs:
            tested = [e for e in run["epochs"] if e["test_accuracy"] is not None]
            verdict = run["verdict"]["verdict"] if run["verdict"] else "not compared"
            lines = accuracy.plot([e["epoch"] for e in tested], [100 * e["test_accuracy"] for e in tested],
                                  marker="o", markersize=3, label=f"{run['run']} ({verdict})")
            loss.plot([e["epoch"] for e in run["epochs"]], [e["train_loss"] for e in run["epochs"]], marker="o",
                      markersize=3, color=lines[0].get_color(), label=run["run"])
        accuracy.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{name}: test accuracy")
        loss.set(xlabel="epoch", ylabel="train loss", title=f"{name}: train loss")
        accuracy.legend(fontsize=7)
        loss.legend(fontsize=7)
    figure.suptitle("official: " + "; ".join(c["source"] for c in table["curves"].values()), fontsize=9)
    figure.savefig(path, format="png", dpi=100)
