"""The one evaluator of whole splits (the trainer's per-epoch evaluation and the evaluate tool's),
and its outputs: metrics.json and the confusion-matrix PNG per eval set, a summary table across
sets and the per-image predictions.

Results are `{'loss', 'count', 'fused', 'local', 'global'}`, each head's entry as in
`metrics.classification_metrics`, in the model's classes; every example counts exactly once
(padding is masked out). Those of an eval set (`evaluate_set`) add its `dataset` and `split`;
`left_out`, the examples per class that count as no class of the model, when there are any; and
`counted_as`, the dataset classes counted as a model class of another name, when there are any.
Where the model has classes the set lacks, each head's metrics are those of its prediction
restricted to the set's classes, and its `unrestricted_accuracy` that of its own prediction.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from matplotlib.figure import Figure

from manet_jax import storage
from manet_jax.bundle import Bundle, BundleError, load_bundle
from manet_jax.data import pipeline
from manet_jax.errors import ConfigError
from manet_jax.forward import HEADS, module_for
from manet_jax.mesh import check_batch_size, make_mesh, replicate
from manet_jax.training.build import build
from manet_jax.training.config import eval_sets
from manet_jax.training.eval_sets import EvalSet, Evaluator, find_eval_sets
from manet_jax.training.metrics import classification_metrics

METRICS_JSON, CONFUSION_PNG = "metrics.json", "confusion_matrix.png"
DEFAULT_BATCH_SIZE = 64  # without a config: rounded up to a multiple of the number of devices

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """An eval set's evaluated examples in the split's order: their position in the split, label
    (model class index), the fused head's restricted prediction and its probabilities over all the
    model's classes."""

    index: np.ndarray  # (n,) int
    label: np.ndarray  # (n,) int
    prediction: np.ndarray  # (n,) int
    probabilities: np.ndarray  # (n, number of model classes) float32


@dataclasses.dataclass(frozen=True)
class SetEvaluation:
    """An eval set, its results (see the module's docstring) and, if the evaluator was asked for
    them, its per-example predictions."""

    eval_set: EvalSet
    results: dict[str, Any]
    predictions: Predictions | None = None


def evaluate_set(evaluator: Evaluator, variables: dict, eval_set: EvalSet) -> SetEvaluation:
    """Evaluates `variables` (on the evaluator's mesh) on `eval_set`: runs the eval step over every
    global batch (its outputs stay on the devices until the end)."""
    step, classes = evaluator.eval_step, evaluator.classes(eval_set)
    totals, examples = None, []
    for batch in evaluator.batches(eval_set):
        outputs = step(variables, batch, classes)
        totals = outputs["sums"] if totals is None else jax.tree.map(jnp.add, totals, outputs["sums"])
        examples.append(outputs["examples"])
    totals, examples = jax.device_get((totals, examples))
    predictions = _predictions(examples) if evaluator.predictions else None
    return SetEvaluation(eval_set, _results(eval_set, totals), predictions)


def _results(eval_set: EvalSet, totals: dict[str, Any]) -> dict[str, Any]:
    """The results (see the module's docstring) of the eval step's sums over `eval_set`."""
    count = int(totals["count"])
    results: dict[str, Any] = {"dataset": eval_set.info.name, "split": eval_set.split,
                               "loss": float(totals["loss"]) / count, "count": count}
    for head in HEADS:
        results[head] = classification_metrics(totals["confusion"][head], eval_set.model_classes)
        if eval_set.restricted:
            results[head]["unrestricted_accuracy"] = float(totals["unrestricted_correct"][head]) / count
    extras = {"left_out": eval_set.left_out, "counted_as": eval_set.counted_as}
    return {**results, **{key: value for key, value in extras.items() if value}}


def _predictions(examples: Sequence[dict[str, np.ndarray]]) -> Predictions:
    """The real rows (mask 1) of the eval step's per-example outputs, in the split's order."""
    joined = {key: np.concatenate([e[key] for e in examples]) for key in examples[0]}
    real = joined["mask"] > 0
    order = np.argsort(joined["index"][real], kind="stable")
    return Predictions(**{field.name: joined[field.name][real][order] for field in dataclasses.fields(Predictions)})


def describe(name: str, results: dict[str, Any]) -> str:
    """One line on an eval set's results: accuracy, mean class and branch accuracies, loss, count."""
    fused = results["fused"]
    unrestricted = (f", unrestricted {fused['unrestricted_accuracy']:.2%}" if "unrestricted_accuracy" in fused
                    else "")
    left_out = "".join(f", {n} {c} left out" for n, c in results.get("left_out", {}).items())
    return (f"{name} accuracy {fused['accuracy']:.2%} (mean class {fused['mean_class_accuracy']:.2%}; local "
            f"{results['local']['accuracy']:.2%}, global {results['global']['accuracy']:.2%}{unrestricted}), loss "
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


def write_report(results: dict[str, Any], metrics_file: epath.Path, figure_file: epath.Path,
                 class_names: Sequence[str]) -> None:
    """Writes the results to `metrics_file` (JSON) and the fused head's confusion matrix to `figure_file` (PNG)."""
    metrics_file.write_text(json.dumps(results, indent=2) + "\n")
    figure = confusion_figure(results["fused"]["confusion_matrix"], class_names, figure_title(results))
    with figure_file.open("wb") as f:
        figure.savefig(f, format="png", dpi=120)


def summary_rows(evaluations: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per eval set and head (fused, then each branch): `set`, `head`, `accuracy`,
    `mean_class_accuracy`, `unrestricted_accuracy` (None unless the prediction was restricted),
    `recall_<class>` per model class (None for a class the set lacks) and `n`."""
    rows = []
    for name, results in evaluations.items():
        for head in HEADS:
            metrics = results[head]
            rows.append({"set": name, "head": head, "accuracy": metrics["accuracy"],
                         "mean_class_accuracy": metrics["mean_class_accuracy"],
                         "unrestricted_accuracy": metrics.get("unrestricted_accuracy"),
                         **{f"recall_{c}": recall for c, recall in metrics["recall"].items()}, "n": results["count"]})
    return rows


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """`summary_rows` as a fixed-width table: percentages, '-' where a value does not apply."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    titles = {"mean_class_accuracy": "mean class", "unrestricted_accuracy": "unrestricted"}

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.2%}" if isinstance(value, float) else str(value)

    table = [[titles.get(key, key.removeprefix("recall_")) for key in keys]]
    table += [[cell(row.get(key)) for key in keys] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in table)


def write_summary(path: epath.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """`summary_rows` as JSON (a list of objects) or CSV (empty cells for None), by `path`'s suffix."""
    path = epath.Path(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(list(rows), indent=2) + "\n")
    else:
        path.write_text(_csv_text(rows))


def write_predictions(path: epath.PathLike, evaluations: Sequence[SetEvaluation], data_dir: str | None) -> None:
    """One CSV row per evaluated image: `set`, `index` (in the split), `file_name` (in the dataset),
    `label` (the model class it counts as), `prediction` (the fused head's, restricted to the set's
    classes) and `fused_<class>`, the probability of each model class."""
    rows = []
    for evaluation in evaluations:
        eval_set, predictions = evaluation.eval_set, evaluation.predictions
        names = eval_set.model_classes
        files = pipeline.file_names(eval_set.info.name, data_dir, eval_set.split, predictions.index)
        for index, file, label, prediction, probabilities in zip(
                predictions.index, files, predictions.label, predictions.prediction, predictions.probabilities):
            rows.append({"set": eval_set.name, "index": int(index), "file_name": file, "label": names[label],
                         "prediction": names[prediction],
                         **{f"fused_{name}": f"{p:.6f}" for name, p in zip(names, probabilities)}})
    epath.Path(path).write_text(_csv_text(rows))


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """`rows` as CSV, a column per key (in the order they first occur), empty cells for None."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def evaluate_model(evaluator: Evaluator, bundle: Bundle, sets: Sequence[EvalSet], checkpoint: str
                   ) -> list[SetEvaluation]:
    """Evaluates `bundle`'s variables on every set with `evaluator`; each set's results also
    name the `checkpoint`, its step and the image size."""
    variables = replicate(bundle.variables, evaluator.mesh)
    evaluations = []
    for eval_set in sets:
        evaluation = evaluate_set(evaluator, variables, eval_set)
        evaluation.results.update({"checkpoint": checkpoint, "step": bundle.step, "image_size": evaluator.image_size})
        evaluations.append(evaluation)
    return evaluations


def report_dir(output_dir: epath.PathLike, eval_set: EvalSet) -> epath.Path:
    """Where the report of `eval_set` goes: `<output_dir>/<dataset>_<split>`."""
    return epath.Path(output_dir) / eval_set.name.replace("/", "_")


def outputs_of(sets: Sequence[EvalSet], output_dir: epath.PathLike, summary: str | None,
               predictions: str | None) -> dict[tuple[str, str], storage.Output]:
    """What `write_outputs` writes, by (eval set, file name) for the reports and ('', option) for
    the summary and predictions files, if named."""
    outputs = {(eval_set.name, name): storage.output(report_dir(output_dir, eval_set) / name)
               for eval_set in sets for name in (METRICS_JSON, CONFUSION_PNG)}
    named = {"--summary": summary, "--predictions": predictions}
    return outputs | {("", option): storage.output(path, option) for option, path in named.items() if path}


def check_outputs(sets: Sequence[EvalSet], output_dir: epath.PathLike, summary: str | None,
                  predictions: str | None) -> epath.PathLike:
    """`output_dir`, once the outputs of `sets` can be written (`storage.check_outputs`), before
    the evaluation starts."""
    storage.check_outputs(list(outputs_of(sets, output_dir, summary, predictions).values()))
    return output_dir


def write_outputs(evaluations: Sequence[SetEvaluation], output_dir: epath.PathLike, data_dir: str | None,
                  summary: str | None = None, predictions: str | None = None) -> dict[str, dict[str, Any]]:
    """Process 0 writes a report per eval set to `<output_dir>/<dataset>_<split>`, and the summary
    table (`summary_rows`) and per-image predictions (`write_predictions`) to the files named, if
    any, all or none (`storage.writing`). Returns the results per eval set."""
    results = {e.eval_set.name: e.results for e in evaluations}
    if jax.process_index() != 0:
        return results
    outputs = outputs_of([e.eval_set for e in evaluations], output_dir, summary, predictions)
    with storage.writing(list(outputs.values())) as temporaries:
        written = dict(zip(outputs, temporaries))
        for evaluation in evaluations:
            name = evaluation.eval_set.name
            write_report(evaluation.results, written[name, METRICS_JSON], written[name, CONFUSION_PNG],
                         evaluation.eval_set.model_classes)
        if summary:
            write_summary(written["", "--summary"], summary_rows(results))
        if predictions:
            write_predictions(written["", "--predictions"], evaluations, data_dir)
    for evaluation in evaluations:
        logger.info("%s; report in %s", describe(evaluation.eval_set.name, evaluation.results),
                    report_dir(output_dir, evaluation.eval_set))
    return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, output_dir: str | None = None, *,
                        class_map: Mapping[str, str | None] | None = None, summary: str | None = None,
                        predictions: str | None = None) -> dict[str, dict[str, Any]]:
    """Evaluates a model (a bundle, or a trainer workdir's best checkpoint) on every eval set of
    `config` (config.eval_dataset, else the splits of config.dataset) as a run of `config` would:
    classes matched by name (and `class_map`), those the model lacks left out. Writes the outputs
    (`write_outputs`; default output_dir: `<checkpoint>/eval`, checked before the evaluation)
    once every set is evaluated. Returns the results per eval set."""
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
    sets = find_eval_sets(eval_sets(config), bundle.spec.class_names, config.data_dir,
                          f"config.eval_dataset={config.eval_dataset!r}", class_map=class_map, leave_out=True)
    output_dir = check_outputs(sets, output_dir or epath.Path(checkpoint) / "eval", summary, predictions)
    evaluator = dataclasses.replace(setup.evaluator, predictions=predictions is not None)
    evaluations = evaluate_model(evaluator, bundle, sets, str(checkpoint))
    return write_outputs(evaluations, output_dir, config.data_dir, summary, predictions)


def evaluate_bundle(checkpoint: str, sets: Sequence[tuple[str, str | None]], output_dir: str | None = None, *,
                    data_dir: str | None = None, batch_size: int | None = None,
                    class_map: Mapping[str, str | None] | None = None, summary: str | None = None,
                    predictions: str | None = None) -> dict[str, dict[str, Any]]:
    """Evaluates a model on `sets` ((dataset, split or None: the one the paper reports on)) with
    no config: image size, wiring, dtype, beta and classes come from the model's header; only the
    eval sets are read (a generated dataset is generated). Every dataset class must count as a
    model class, by name or by `class_map` (None: left out). Global batches of `batch_size`
    (default: DEFAULT_BATCH_SIZE rounded up to a multiple of the devices). Writes the outputs
    (`write_outputs`; default output_dir: `<checkpoint>/eval`, checked before the evaluation)
    once every set is evaluated. Returns the results per eval set."""
    bundle = load_bundle(checkpoint)
    spec = bundle.spec
    if spec.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(f"{checkpoint} computes in float64, which needs 64-bit JAX: set JAX_ENABLE_X64=1")
    mesh = make_mesh()
    batch_size = batch_size or -(-DEFAULT_BATCH_SIZE // mesh.size) * mesh.size
    check_batch_size(batch_size, mesh, "--batch-size")
    found = find_eval_sets(sets, spec.class_names, data_dir, "name each eval set once", class_map=class_map)
    output_dir = check_outputs(found, output_dir or epath.Path(checkpoint) / "eval", summary, predictions)
    evaluator = Evaluator(module_for(spec, mesh), spec.beta, mesh, spec.image_size, batch_size, data_dir,
                          predictions=predictions is not None)
    evaluations = evaluate_model(evaluator, bundle, found, str(checkpoint))
    return write_outputs(evaluations, output_dir, data_dir, summary, predictions)
