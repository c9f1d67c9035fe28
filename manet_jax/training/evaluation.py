"""What an evaluation reads and computes: eval sets (a dataset's split, its classes matched to a
model's by name), the `Evaluator` that feeds them to a model's eval step, and the one evaluation
of whole splits (`evaluate_set`), the trainer's per-epoch one and the evaluate tool's.

The trainer's eval sets come from its config (`build.build`), the tool's also from a model bundle
alone (`run.evaluate_bundle`); what an evaluation writes is in `record`.

Results are `{'loss', 'count', 'fused', 'local', 'global'}`, each head's entry as in
`steps.classification_metrics`, in the model's classes; every example counts exactly once
(padding is masked out). Those of an eval set add its `dataset` and `split`; `left_out`, the
examples per class that count as no class of the model, when there are any; and `counted_as`, the
dataset classes counted as a model class of another name, when there are any. Where the model has
classes the set lacks, each head's metrics are those of its prediction restricted to the set's
classes, and its `unrestricted_accuracy` that of its own prediction.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from manet_jax.bundle import Bundle
from manet_jax.data import pipeline
from manet_jax.data.errors import ClassMapError, DatasetNameError
from manet_jax.data.labels import LEFT_OUT, match_classes
from manet_jax.errors import ConfigError
from manet_jax.forward import HEADS
from manet_jax.mesh import prefetch_to_device, replicate
from manet_jax.models import MANet
from manet_jax.training.steps import classification_metrics, make_eval_step


GlobalBatches = Iterator[dict[str, jax.Array]]
DatasetInfoFn = Callable[[str, str | None], pipeline.DatasetInfo]


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A split a model is evaluated on: its examples of the classes `label_map` maps to one of
    the model's `model_classes` (per class of the dataset, the model class's index or LEFT_OUT)."""

    info: pipeline.DatasetInfo
    split: str
    model_classes: tuple[str, ...]
    label_map: tuple[int, ...]

    @property
    def name(self) -> str:
        """'<dataset>/<split>' (e.g. 'fed_ro/test'): its key in metrics and summaries, and in TensorBoard tags."""
        return f"{self.info.name}/{self.split}"

    @property
    def num_examples(self) -> int:
        """Its examples that are evaluated (without the data's class counts: the split's size)."""
        counts = self.info.class_counts.get(self.split)
        if counts is None:
            return self.info.splits.get(self.split, 0)
        return sum(count for count, label in zip(counts, self.label_map) if label != LEFT_OUT)

    @property
    def left_out(self) -> dict[str, int]:
        """The examples of the classes that are left out, per class: not evaluated."""
        counts = self.info.class_counts.get(self.split, [])
        return {name: count for name, count, label in zip(self.info.class_names, counts, self.label_map)
                if label == LEFT_OUT and count}

    @property
    def counted_as(self) -> dict[str, str]:
        """The dataset classes counted as a model class of another name: that name, per class."""
        return {name: self.model_classes[label] for name, label in zip(self.info.class_names, self.label_map)
                if label != LEFT_OUT and self.model_classes[label] != name}

    @property
    def classes(self) -> np.ndarray:
        """(number of model classes,) bool: the model classes the set's classes count as, those its
        predictions are restricted to."""
        classes = np.zeros(len(self.model_classes), bool)
        classes[[label for label in self.label_map if label != LEFT_OUT]] = True
        return classes

    @property
    def restricted(self) -> bool:
        """Whether the model has classes the set does not count as (its predictions are restricted)."""
        return not self.classes.all()


def find_eval_sets(sets: Sequence[tuple[str, str | None]], model_classes: Sequence[str], data_dir: str | None,
                   source: str, dataset_info: DatasetInfoFn = pipeline.dataset_info,
                   class_map: Mapping[str, str | None] | None = None, leave_out: bool = False
                   ) -> tuple[EvalSet, ...]:
    """The eval sets (dataset, split or None: the one the paper reports on) for a model of
    `model_classes`, each dataset described by `dataset_info(name, data_dir)` (which prepares a
    generated one and raises, naming the command, for one not prepared) and its classes matched
    by name (`labels.match_classes` with `class_map` and `leave_out`). Raises, before any is
    evaluated, for a split that does not exist, a set with nothing to evaluate, a set named twice
    (`source` says where the sets were named) and class map entries that name no class of any set."""
    found: list[EvalSet] = []
    for name, split in sets:
        info = dataset_info(name, data_dir)
        split = split or info.eval_split
        if split not in info.splits:
            raise DatasetNameError(f"{name} has no split {split!r} to evaluate; splits: {list(info.splits)}")
        label_map = match_classes(tuple(model_classes), info.class_names, name, class_map, leave_out)
        eval_set = EvalSet(info, split, tuple(model_classes), label_map)
        if not eval_set.num_examples:
            raise ConfigError(f"{eval_set.name} has no examples of the model's {len(model_classes)} classes "
                              "to evaluate")
        if eval_set.name in {s.name for s in found}:
            raise ConfigError(f"{eval_set.name} is evaluated twice; {source}")
        found.append(eval_set)
    unused = sorted(set(class_map or {}) - {name for s in found for name in s.info.class_names})
    if unused:
        raise ClassMapError(f"class map entries for {', '.join(unused)}: no eval set has such a class")
    return tuple(found)


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """How a model is evaluated: `model` (its predictions mix the branches by `beta`) on `mesh`, on
    eval images of `image_size` read from `data_dir` in global batches of `batch_size`; with
    `predictions`, the eval step also returns each example's prediction and probabilities."""

    model: MANet
    beta: float
    mesh: Mesh
    image_size: int
    batch_size: int
    data_dir: str | None = None
    predictions: bool = False

    @functools.cached_property
    def eval_step(self) -> Callable:
        """`steps.make_eval_step`'s step, compiled once for all eval sets."""
        return make_eval_step(self.model, self.mesh, self.beta, examples=self.predictions)

    def batches(self, eval_set: EvalSet) -> GlobalBatches:
        """Every example `eval_set` evaluates once, labelled with its model class, padding masked, on the mesh."""
        return prefetch_to_device(pipeline.eval_iterator(
            eval_set.info.name, self.data_dir, split=eval_set.split, image_size=self.image_size,
            global_batch_size=self.batch_size, label_map=eval_set.label_map), self.mesh)

    def classes(self, eval_set: EvalSet) -> jax.Array:
        """`eval_set.classes` replicated on the mesh: the eval step's restriction."""
        return replicate(eval_set.classes, self.mesh)


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
