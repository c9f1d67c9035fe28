"""The spread of results over several runs of one recipe (e.g. seeds): mean, standard deviation,
minimum and maximum of each metric, at the best and at the last epoch.

`spreads(runs)` takes the summaries of trainer workdirs (`workdir.read_summary`) and returns a
JSON-ready table; `markdown(table)` writes it for people. The standard deviation is the sample one
(ddof 1; 0 for a single run). Like the summaries, it holds no arrays and needs no JAX.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from manet_jax.errors import ManetError
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


def markdown(table: dict[str, Any]) -> str:
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
