"""What a run leaves on record: its log lines, metric records, summary, progress and figures, and
an evaluation's reports.

The `Reporter` is what a training run shows: its log lines (the plan, train metrics with
throughput and ETA, each epoch's evaluation, the end; from process 0 alone), its metric records
(`MetricWriter`), each evaluation's confusion matrices as TensorBoard images and, after each
evaluation, its summary (`RunSummary`).

Metric records go to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard/`), from
process 0 only. A record is a JSON object with `step` (optimizer steps done), `epoch` and nested
metric dicts, e.g. `{"step": 96, "epoch": 1, "train": {"loss": ...}, "eval": {"raf_db/test":
{"fused": {"accuracy": ...}}}}`. TensorBoard gets every number as a scalar tagged by its path
(`eval/raf_db/test/fused/accuracy`, `eval/raf_db/test/fused/recall/Happiness`); lists (confusion
matrices) stay in the JSON, and are drawn as images. Both go through the storage layer
(`manet_jax.storage`), to a local disk or a bucket alike.

`RunSummary` is a training run's bookkeeping across epochs: its best and last evaluation, the
train metrics of the epoch so far, and `summary.json`, whose format is `workdir`'s; the best entry
is the one `bundle.best_step` picks by the fused accuracy on the first eval set (`ranked_by`), as
the checkpoints keep theirs. Checkpoints keep the bookkeeping as their host state, so that a
resumed run goes on as an uninterrupted one. A run that follows an official recipe
(`official.matching_curve`) also keeps, under `official`, each evaluated epoch's accuracy beside
the official run's (`official.Curve.compare`).

An evaluation's outputs (`write_outputs`): metrics.json and the confusion-matrix PNG per eval set,
a summary table across sets and the per-image predictions, written whole or not at all.

Each write to a workdir first checks that this trainer still holds its lease (`workdir.check_held`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import google_crc32c
import jax
import numpy as np
import tensorflow as tf
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

from manet_jax import storage
from manet_jax.bundle import best_step
from manet_jax.data import pipeline
from manet_jax.errors import ConfigError, ManetError
from manet_jax.forward import HEADS
from manet_jax.storage import replace_text
from manet_jax.training.build import Setup
from manet_jax.training.evaluation import EvalSet, SetEvaluation, describe
from manet_jax.training.official import Curve
from manet_jax.training.steps import mean_train_metrics
from manet_jax.training.workdir import Lease, check_held, upgraded


METRICS_JSON, CONFUSION_PNG = "metrics.json", "confusion_matrix.png"  # an evaluation's report, per eval set
METRICS_FILE, TENSORBOARD_DIR = "metrics.jsonl", "tensorboard"  # a run's metric records
ROTATE_BYTES = 1 << 20  # an event file this large is complete; the next write starts another

logger = logging.getLogger(__name__)


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


class Progress:
    """Throughput over the last interval and an ETA from the mean time per step since the first
    report, so the first interval (which compiles the step) is left out and evaluation is counted."""

    def __init__(self, total_steps: int, batch_size: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._first: tuple[int, float] | None = None
        self._last: tuple[int, float] | None = None

    def update(self, step: int) -> tuple[float | None, float | None]:
        """(images per second since the last update, seconds left); None at the first update."""
        now = time.monotonic()
        last, self._last = self._last, (step, now)
        if last is None:
            self._first = self._last
            return None, None
        first_step, first_time = self._first
        seconds_left = (self.total_steps - step) * (now - first_time) / (step - first_step)
        return (step - last[0]) * self.batch_size / (now - last[1]), seconds_left

    def skip(self) -> None:
        """Leaves the time since the last update (evaluation, checkpointing) out of the next
        throughput; the ETA still counts it."""
        if self._last is not None:
            self._last = (self._last[0], time.monotonic())


def format_duration(seconds: float | None) -> str:
    """H:MM:SS, or '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class MetricsFileError(ManetError, ValueError):
    """A line of metrics.jsonl before its last is not a record; the message names the line."""


class MetricWriter:
    """Writes records when `enabled` (process 0), while this trainer holds `lease` (if given); does
    nothing elsewhere."""

    def __init__(self, workdir: epath.PathLike, enabled: bool = True, lease: Lease | None = None):
        self.enabled, self.lease = enabled, lease
        self.path = epath.Path(workdir) / METRICS_FILE
        self._tensorboard = None
        if enabled:
            self._tensorboard = EventFiles(epath.Path(workdir) / TENSORBOARD_DIR)

    def truncate(self, step: int) -> None:
        """Drops records after `step`: a resumed run rewrites what followed its checkpoint. A last
        line cut short (a run killed, or a disk full, while appending it) is dropped with a warning."""
        if not (self.enabled and self.path.exists()):
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                record_step = json.loads(line)["step"]
            except (ValueError, TypeError, KeyError) as e:
                if number < len(lines):
                    raise MetricsFileError(f"{self.path}: line {number} is not a metric record ({type(e).__name__}: "
                                           f"{e}); remove or repair it, then run the same command again") from None
                logger.warning("%s: dropped line %d, cut short when the last run stopped while writing it",
                               self.path, number)
                continue
            if record_step <= step:
                kept.append(line)
        check_held(self.lease)
        storage.replace_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        check_held(self.lease)
        storage.append_text(self.path, json.dumps(record) + "\n")
        for tag, value in _scalars(record):
            self._tensorboard.scalar(tag, value, record["step"])
        self._tensorboard.flush()

    def write_figure(self, tag: str, figure: Figure, step: int) -> None:
        if self.enabled:
            check_held(self.lease)
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            pixels, png = np.asarray(canvas.buffer_rgba())[..., :3], io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG")
            self._tensorboard.image(tag, png.getvalue(), pixels.shape[1], pixels.shape[0], step)
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.flush()


class EventFiles:
    """TensorBoard event files in `directory`, kept in memory and written whole through the storage
    layer at each flush (TensorFlow's own writer would reach a bucket only through its `gs://`
    filesystem). Each event is a TFRecord of a `tensorflow.Event`, scalars and images as
    `tf.summary`'s v2 ops write them. A file that reaches ROTATE_BYTES is complete, and the next
    event starts another (TensorBoard reads a directory's files in order)."""

    def __init__(self, directory: epath.Path):
        self.directory, self._data, self._name, self._written = directory, bytearray(), None, 0
        self._files = itertools.count()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add(step, tag, tf.make_tensor_proto(np.float32(value)), "scalars")

    def image(self, tag: str, png: bytes, width: int, height: int, step: int) -> None:
        self._add(step, tag, tf.make_tensor_proto([str(width).encode(), str(height).encode(), png]), "images")

    def _add(self, step: int, tag: str, tensor: Any, plugin: str) -> None:
        if self._name is None:
            now = time.time()
            self._name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(self._files)}.v2"
            self._data += _record(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))
        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        self._data += _record(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)])))

    def flush(self) -> None:
        """Writes the current file whole, when it holds events not written yet."""
        if self._name is None or len(self._data) == self._written:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        storage.replace_bytes(self.directory / self._name, bytes(self._data))
        self._written = len(self._data)
        if self._written >= ROTATE_BYTES:
            self._data, self._name, self._written = bytearray(), None, 0


def _record(event: Any) -> bytes:
    """`event` framed as a TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    data = event.SerializeToString()
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _scalars(tree: dict[str, Any], prefix: str = ""):
    """(tag, number) for every number in a nested record but its step."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            yield prefix + key, value


class RunSummary:
    """The best and last evaluation of every eval set, ranked by `ranked_by`'s fused accuracy, and
    the epoch's train metrics, and each epoch beside the official `curve` (if the run follows its
    recipe); `write` replaces `path` (when `enabled`, process 0) while this trainer holds `lease`
    (if given)."""

    def __init__(self, ranked_by: str, path: epath.Path, enabled: bool = True, lease: Lease | None = None,
                 curve: Curve | None = None):
        self.ranked_by, self.path, self.enabled, self.lease, self.curve = ranked_by, path, enabled, lease, curve
        self.official: list[dict[str, Any]] = []  # Curve.compare of each evaluated epoch
        self.best: dict[str, Any] | None = None  # {"epoch", "step", "eval": {eval set: results}}
        self.last: dict[str, Any] | None = None
        self.epoch_metrics: list[dict[str, float]] = []  # host metrics of this epoch's steps so far

    def to_json(self) -> dict[str, Any]:
        """`{'ranked_by', 'best', 'last'}` (and `official`: the curve, its source and the compared
        epochs, with a curve), as summary.json holds it."""
        summary = {"ranked_by": self.ranked_by, "best": self.best, "last": self.last}
        if self.curve is not None:
            summary["official"] = {"curve": self.curve.name, "source": self.curve.source, "epochs": self.official}
        return summary

    def host_state(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the train state, so that a resumed run logs as this one."""
        return {"summary": self.to_json(), "epoch_metrics": list(self.epoch_metrics)}

    def resume(self, host_state: dict[str, Any], dataset: str, workdir: epath.Path) -> None:
        """Takes up a checkpoint's host state (its summary upgraded as `workdir.upgraded` reads a run of
        `dataset`); raises ConfigError if the checkpoints of `workdir` are ranked by another eval set."""
        summary = upgraded(host_state["summary"], dataset)
        if summary["ranked_by"] not in (None, self.ranked_by):
            raise ConfigError(f"{workdir} ranks its checkpoints by {summary['ranked_by']}, this config by "
                              f"{self.ranked_by} (its first eval set); resume with the eval sets it was "
                              "started with (config.eval_dataset), or use a new workdir")
        self.best, self.last = summary["best"], summary["last"]
        self.official = summary.get("official", {}).get("epochs", []) if self.curve is not None else []
        self.epoch_metrics = host_state["epoch_metrics"]

    def add_train(self, window: list[dict[str, float]]) -> None:
        """Adds the host metrics of some of this epoch's steps."""
        self.epoch_metrics += window

    def take_epoch_metrics(self) -> list[dict[str, float]]:
        """The epoch's train metrics, leaving none for the next."""
        metrics, self.epoch_metrics = self.epoch_metrics, []
        return metrics

    def add_evaluation(self, epoch: int, step: int, results: dict[str, Any]) -> float:
        """Records the results of every eval set at `step` as the last entry, and the best if it is;
        returns the accuracy that ranks the checkpoints."""
        entry = {"epoch": epoch, "step": step, "eval": results}
        candidates = [(step, self.accuracy(entry))]
        if self.best is not None:
            candidates.append((self.best["step"], self.accuracy(self.best)))
        if best_step(candidates) == step:
            self.best = entry
        self.last = entry
        compared = self.curve and self.curve.compare(epoch, self.accuracy(entry))
        if compared:
            self.official.append(compared)
        return self.accuracy(entry)

    def official_at(self, epoch: int) -> dict[str, Any] | None:
        """The comparison of `epoch` with the official curve, if it was compared."""
        return next((c for c in self.official if c["epoch"] == epoch), None)

    def accuracy(self, entry: dict[str, Any]) -> float:
        """An entry's fused accuracy on the `ranked_by` set."""
        return entry["eval"][self.ranked_by]["fused"]["accuracy"]

    def write(self) -> None:
        """Replaces summary.json whole (process 0)."""
        if self.enabled:
            check_held(self.lease)
            replace_text(self.path, json.dumps(self.to_json(), indent=2) + "\n")


class Reporter:
    """Reports the run of `setup` through `writer`, timing it with its own `progress`."""

    def __init__(self, setup: Setup, writer: MetricWriter):
        self.setup, self.config, self.writer = setup, setup.config, writer
        self.is_main = jax.process_index() == 0
        self.progress = Progress(setup.total_steps, self.config.batch_size)

    def plan(self, start: int) -> None:
        """Logs the data, the eval sets and the steps ahead of a run starting after step `start`."""
        if self.is_main:
            setup, info = self.setup, self.setup.info
            evaluated = ", ".join(f"{s.name} ({s.num_examples})" for s in setup.eval_sets)
            logger.info("%s: %d train examples, %d classes, evaluated on %s; steps %d..%d of batch %d (%d per "
                        "epoch) on %d device(s) in %d process(es)", self.config.dataset, info.splits[info.train_split],
                        info.num_classes, evaluated, start + 1, setup.total_steps, self.config.batch_size,
                        setup.steps_per_epoch, setup.mesh.size, jax.process_count())

    def train(self, window: list[dict[str, float]], done: int) -> None:
        """Writes and logs the means of the host metrics of the steps up to `done`."""
        images_per_second, seconds_left = self.progress.update(done)
        record = {"step": done, "epoch": done / self.setup.steps_per_epoch,
                  "train": mean_train_metrics(window, self.config.batch_size),
                  "learning_rate": float(self.setup.schedule(done - 1)), "images_per_second": images_per_second}
        self.writer.write(record)
        if self.is_main:
            train = record["train"]
            speed = "compiled" if images_per_second is None else f"{images_per_second:.1f} img/s"
            logger.info("step %d/%d (epoch %.2f/%d) loss %.4f (local %.4f, global %.4f) train acc %.2f%% lr %.3g "
                        "| %s | ETA %s", done, self.setup.total_steps, record["epoch"], self.config.num_epochs,
                        train["loss"], train["loss_local"], train["loss_global"], 100 * train["accuracy"],
                        record["learning_rate"], speed, format_duration(seconds_left))

    def epoch(self, epoch: int, done: int, epoch_metrics: list[dict[str, float]], summary: RunSummary) -> None:
        """Writes the epoch's record (the means of its train metrics, and the evaluation if there was
        one at this step); after an evaluation, draws its confusion matrices, writes the summary
        (`RunSummary.write`) and logs the results."""
        record: dict[str, Any] = {"step": done, "epoch": epoch,
                                  "train_epoch": mean_train_metrics(epoch_metrics, self.config.batch_size)}
        last, best = summary.last, summary.best
        evaluated = last is not None and last["step"] == done
        if evaluated:
            record["eval"] = last["eval"]
            record["best"] = {"epoch": best["epoch"], "accuracy": summary.accuracy(best)}
        self.writer.write(record)
        if not (self.is_main and evaluated):
            return
        for name, results in last["eval"].items():
            self.writer.write_figure(f"eval/{name}/fused/confusion_matrix", confusion_figure(
                results["fused"]["confusion_matrix"], self.setup.info.class_names, figure_title(results)), done)
        summary.write()
        lines = [f"epoch {epoch}/{self.config.num_epochs} {describe(name, results)}"
                 for name, results in last["eval"].items()]
        logger.info("%s; train accuracy %.2f%%; best %.2f%% at epoch %d%s%s", lines[0],
                    100 * record["train_epoch"]["accuracy"], 100 * record["best"]["accuracy"], best["epoch"],
                    official_text(summary, epoch), "".join(f"\n  {line}" for line in lines[1:]))

    def done(self, summary: RunSummary) -> None:
        """Logs the best and last accuracy of a finished run."""
        best, last = summary.best, summary.last
        if self.is_main and best is not None:
            logger.info("done: %s accuracy best %.2f%% (epoch %d), last %.2f%% (epoch %d); summary in %s",
                        summary.ranked_by, 100 * summary.accuracy(best), best["epoch"], 100 * summary.accuracy(last),
                        last["epoch"], summary.path)


def official_text(summary: RunSummary, epoch: int) -> str:
    """'; official RAF-DB 77.71% (gap -1.20 points, on track)' for an epoch compared with the
    official curve; '' for one that was not (a run that does not follow an official recipe)."""
    compared = summary.official_at(epoch)
    if compared is None:
        return ""
    return (f"; official {summary.curve.name} {100 * compared['official']:.2f}% (gap {100 * compared['gap']:+.2f} "
            f"points, {compared['verdict']})")
