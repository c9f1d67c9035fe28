"""What a training run shows: its log lines (the plan, train metrics with throughput and ETA, each
epoch's evaluation, the end), its metric records (`metric_writer`: metrics.jsonl and TensorBoard),
each evaluation's confusion matrices as TensorBoard images and, after each evaluation, its
summary (`run_summary`). Logs come from process 0 alone.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from manet_jax.training.build import Setup
from manet_jax.training.evaluation import confusion_figure, describe, figure_title
from manet_jax.training.metric_writer import MetricWriter
from manet_jax.training.metrics import mean_train_metrics
from manet_jax.training.progress import Progress, format_duration
from manet_jax.training.run_summary import RunSummary

logger = logging.getLogger(__name__)


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
