"""Evaluation over a whole split, its report (metrics.json, confusion-matrix PNG) and the evaluator.

Results are `{'loss', 'count', 'fused', 'local', 'global'}`, each head's entry as in
`metrics.classification_metrics`; every example counts exactly once (padding is masked out). Those
of an eval set (`evaluate_set`) add its `dataset` and `split`, and `left_out`, the examples per
class the model has no head for, when there are any.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from matplotlib.figure import Figure

from manet_jax.bundle import BundleError, load_bundle
from manet_jax.forward import HEADS
from manet_jax.mesh import replicate
from manet_jax.training.build import EvalSet, Setup, build
from manet_jax.training.metrics import classification_metrics

METRICS_JSON, CONFUSION_PNG = "metrics.json", "confusion_matrix.png"

logger = logging.getLogger(__name__)


def evaluate(eval_step: Callable, variables: dict, batches: Iterator[dict[str, jax.Array]],
             class_names: Sequence[str]) -> dict[str, Any]:
    """Runs `eval_step` over every global batch (sums stay on device) and returns the split's results."""
    totals = None
    for batch in batches:
        sums = eval_step(variables, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    results: dict[str, Any] = {"loss": float(totals["loss"]) / count, "count": count}
    for head in HEADS:
        results[head] = classification_metrics(totals["confusion"][head], class_names)
    return results


def evaluate_set(setup: Setup, variables: dict, eval_set: EvalSet) -> dict[str, Any]:
    """The results of `variables` (on the mesh) on `eval_set`, as a run of `setup` evaluates it."""
    results = evaluate(setup.eval_step, variables, setup.eval_batches(eval_set), setup.info.class_names)
    left_out = {"left_out": eval_set.left_out} if eval_set.left_out else {}
    return {"dataset": eval_set.info.name, "split": eval_set.split, **results, **left_out}


def describe(name: str, results: dict[str, Any]) -> str:
    """One line on an eval set's results: accuracy, mean class and branch accuracies, loss, count."""
    fused = results["fused"]
    left_out = "".join(f", {n} {c} left out" for n, c in results.get("left_out", {}).items())
    return (f"{name} accuracy {fused['accuracy']:.2%} (mean class {fused['mean_class_accuracy']:.2%}; local "
            f"{results['local']['accuracy']:.2%}, global {results['global']['accuracy']:.2%}), loss "
            f"{results['loss']:.4f}, n={results['count']}{left_out}")


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> Figure:
    """The confusion matrix (rows: true class, columns: prediction): counts, shaded by row share."""
    confusion = np.asarray(confusion)
    share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    n = len(class_names)
    figure = Figure(figsize=(1.0 + 0.8 * n, 1.0 + 0.7 * n), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), count in np.ndenumerate(confusion):
        axes.text(col, row, str(count), ha="center", va="center", fontsize=8,
                  color="white" if share[row, col] > 0.5 else "black")
    axes.set_xticks(range(n), class_names, rotation=45, ha="right")
    axes.set_yticks(range(n), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    return figure


def figure_title(results: dict[str, Any], head: str = "fused") -> str:
    metrics = results[head]
    return (f"{head}: accuracy {metrics['accuracy']:.2%}, mean class accuracy "
            f"{metrics['mean_class_accuracy']:.2%} (n={results['count']})")


def write_report(results: dict[str, Any], output_dir: epath.PathLike, class_names: Sequence[str]) -> None:
    """Writes metrics.json and the fused head's confusion_matrix.png to `output_dir`."""
    output_dir = epath.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / METRICS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    figure = confusion_figure(results["fused"]["confusion_matrix"], class_names, figure_title(results))
    with (output_dir / CONFUSION_PNG).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, output_dir: str | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Evaluates a model (a bundle, or a trainer workdir's best checkpoint) on every eval set of
    `config` (config.eval_dataset, else the splits of config.dataset) as a run of `config` would;
    process 0 writes a report per set to `<output_dir>/<dataset>_<split>` (default output_dir:
    `<checkpoint>/eval`). Returns the results per eval set."""
    setup = build(config)
    bundle = load_bundle(checkpoint)
    info = setup.info
    if bundle.spec.num_classes != info.num_classes:
        raise BundleError(f"{checkpoint} has {bundle.spec.num_classes}-way heads but {config.dataset} has "
                          f"{info.num_classes} classes; pass the config of the dataset it was trained on")
    if bundle.spec.multiscale_wiring != setup.spec.multiscale_wiring:
        raise BundleError(f"{checkpoint} holds a model of the {bundle.spec.multiscale_wiring} multi-scale wiring; "
                          f"evaluate it with --config.multiscale_wiring={bundle.spec.multiscale_wiring}")
    if bundle.spec.class_names != info.class_names:
        logger.warning("%s was trained on classes %s; %s has %s", checkpoint, list(bundle.spec.class_names),
                       config.dataset, list(info.class_names))
    variables = replicate(bundle.variables, setup.mesh)
    output_dir = epath.Path(output_dir or epath.Path(checkpoint) / "eval")
    evaluations = {}
    for eval_set in setup.eval_sets:
        results = {"checkpoint": str(checkpoint), "step": bundle.step, "image_size": config.image_size,
                   **evaluate_set(setup, variables, eval_set)}
        evaluations[eval_set.name] = results
        report_dir = output_dir / eval_set.name.replace("/", "_")
        if jax.process_index() == 0:
            write_report(results, report_dir, info.class_names)
            logger.info("%s; report in %s", describe(eval_set.name, results), report_dir)
    return evaluations
