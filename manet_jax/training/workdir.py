"""A trainer workdir's own files, and the format of its summary.

`config.json` is the run's resolved config. `summary.json` holds its best and its last evaluation:
`{"ranked_by": "fed_ro/test", "best": entry, "last": entry}`, where an entry is `{"epoch", "step",
"eval": {eval set: results}}` with the results of every eval set (`evaluation.evaluate_set`); the
best is the entry with the highest fused accuracy on the `ranked_by` set (the first eval set), the
earliest on ties.
"""

from __future__ import annotations

from typing import Any

CONFIG_FILE, SUMMARY_FILE = "config.json", "summary.json"


def upgraded(summary: dict[str, Any], dataset: str) -> dict[str, Any]:
    """`summary` in the current format. Summaries written before eval sets hold one evaluation per
    entry, of `dataset` (the run's config.dataset) and the split it names."""
    if "ranked_by" in summary:
        return summary
    current: dict[str, Any] = {"ranked_by": None}
    for key in ("best", "last"):
        entry = summary.get(key)
        if entry is not None:
            current["ranked_by"] = f"{dataset}/{entry['eval']['split']}"
            entry = {**entry, "eval": {current["ranked_by"]: {"dataset": dataset, **entry["eval"]}}}
        current[key] = entry
    return current
