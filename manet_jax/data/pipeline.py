"""Host input pipelines: dataset info, the infinite training iterator and the eval iterator.

The training data may be the union of several datasets with the same classes ('affectnet/7+raf_db'),
sampled as one; evaluation reads one dataset's split.

Batches are dicts of NumPy arrays sized per process: 'image' float32 (B / P, size, size, 3) and
'label' int32 (B / P,), plus 'mask' float32 and 'index' int32 for evaluation. Examples are read by
random access from the prepared ArrayRecord files (see `sampling` for which examples a step holds)
and decoded and augmented by a parallel, deterministic tf.data map (see `augment`; the options are
`options.input_config()`). Each example's augmentation is seeded by (seed, epoch, position), so
resuming at a step reproduces the uninterrupted stream exactly without decoding the skipped images.
TensorFlow runs on the host: entry points hide the accelerators from it (see `cli`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from manet_jax.data import augment, sampling
from manet_jax.data.builder_base import FILE_NAME, IMAGE, LABEL, LABELS_METADATA, SKIPPED_METADATA, FerBuilder
from manet_jax.data.errors import DatasetNameError, DatasetNotFoundError
from manet_jax.data.locations import check_data_dir, default_manual_dir, resolve_data_dir
from manet_jax.data.registry import make_builder, published_splits, split_name, union_members
from manet_jax.data.synthetic_faces import SyntheticFaces
from manet_jax.mesh import INDEX, pad_batch

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a prepared dataset, or a union of datasets ('a+b')."""

    name: str
    dataset_dirs: tuple[str, ...]  # each prepared dataset's own folder, <data_dir>/<name>/<config>/<version>
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]  # split -> number of examples
    train_split: str | None  # None: a dataset for evaluation only
    eval_split: str | None  # the split papers report on; a union has one only if all its datasets agree
    class_counts: dict[str, list[int]]  # split -> number of examples per class ({} without the data)
    skipped_files: dict[str, list[tuple[str, str]]]  # split -> (file, reason) left out at build


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Info on dataset `name` (e.g. 'raf_db', 'affectnet/8', 'synthetic_faces/64'), or on the union
    of several joined by '+' ('affectnet/7+raf_db': the splits all of them have, in that order;
    they must have the same classes and a train split).

    synthetic_faces is generated on first use. Raises DatasetNotFoundError, with the command that
    prepares it, when another dataset has not been prepared in `data_dir`.
    """
    return _union(name, [_single_info(member, data_dir) for member in union_members(name)])


def published_info(name: str) -> DatasetInfo:
    """Info on dataset `name` (or a union) without its data: classes, split names and split sizes
    as published (`registry.published_splits`; none where they depend on your files); no class
    counts, folders or skipped files."""
    return _union(name, [_published_info(member) for member in union_members(name)])


def _union(name: str, infos: list[DatasetInfo]) -> DatasetInfo:
    """The info of the union `name` of datasets `infos` (the one info when there is one)."""
    if len(infos) == 1:
        return infos[0]
    for info in infos:
        if info.class_names != infos[0].class_names:
            raise DatasetNameError(f"the datasets of {name} must have the same classes: {infos[0].name} has "
                                   f"{list(infos[0].class_names)}, {info.name} {list(info.class_names)}")
        if info.train_split is None:
            raise DatasetNameError(f"{info.name} has no train split (it is for evaluation only), so it cannot be "
                                   f"part of {name}")
    splits = [split for split in infos[0].splits if all(split in info.splits for info in infos)]
    return DatasetInfo(
        name=name,
        dataset_dirs=tuple(d for info in infos for d in info.dataset_dirs),
        num_classes=infos[0].num_classes,
        class_names=infos[0].class_names,
        splits={split: sum(info.splits[split] for info in infos) for split in splits},
        train_split=infos[0].train_split,
        eval_split=infos[0].eval_split if len({info.eval_split for info in infos}) == 1 else None,
        class_counts={split: np.sum([info.class_counts[split] for info in infos], 0).tolist() for split in splits
                      if all(split in info.class_counts for info in infos)},
        skipped_files={split: [(f"{info.name}:{file}", reason) for info in infos
                               for file, reason in info.skipped_files.get(split, [])] for split in splits},
    )


def _single_info(name: str, data_dir: str | None) -> DatasetInfo:
    builder = _prepared_builder(name, data_dir)
    metadata = builder.info.metadata
    return DatasetInfo(
        name=name,
        dataset_dirs=(os.fspath(builder.data_dir),),
        num_classes=builder.num_classes,
        class_names=tuple(builder.info.features[LABEL].names),
        splits={split: info.num_examples for split, info in builder.info.splits.items()},
        train_split=builder.TRAIN_SPLIT,
        eval_split=builder.EVAL_SPLIT,
        class_counts={split: np.bincount(_split_labels(builder, split), minlength=builder.num_classes).tolist()
                      for split in builder.info.splits},
        skipped_files={s: [tuple(b) for b in bad] for s, bad in metadata[SKIPPED_METADATA].items()},
    )


def _published_info(name: str) -> DatasetInfo:
    builder = make_builder(name)
    return DatasetInfo(name=name, dataset_dirs=(), num_classes=builder.num_classes,
                       class_names=tuple(builder.info.features[LABEL].names), splits=published_splits(name),
                       train_split=builder.TRAIN_SPLIT, eval_split=builder.EVAL_SPLIT, class_counts={},
                       skipped_files={})


def steps_per_epoch(info_or_num_examples: DatasetInfo | int, global_batch_size: int) -> int:
    """Steps in one pass over the train split (the last partial batch counts as a step)."""
    n = (info_or_num_examples.splits[info_or_num_examples.train_split]
         if isinstance(info_or_num_examples, DatasetInfo) else info_or_num_examples)
    return sampling.steps_per_epoch(n, global_batch_size)


def train_iterator(name: str, data_dir: str | None = None, *, split: str = "train", image_size: int,
                   global_batch_size: int, seed: int, options: Mapping[str, Any], start_step: int = 0,
                   num_steps: int | None = None, process_index: int | None = None,
                   process_count: int | None = None, num_threads: int | None = None,
                   prefetch: int = 2) -> Iterator[Batch]:
    """This process's share of the training batches of dataset `name` from `start_step`:
    `num_steps` of them, or without end. A run passes its number of steps: a pipeline left
    producing batches nobody takes holds the process at exit while its threads finish them.

    A union ('affectnet/7+raf_db') samples its datasets' `split` as one: an epoch shows each of
    their examples once (or draws as many, with balanced_sampling over the union's classes).

    `options` (see `options.input_config`): RandomResizedCrop(image_size, crop_scale,
    crop_ratio), horizontal flip with flip_prob, [0, 1] scaling, RandomErasing with probability
    random_erasing; balanced_sampling draws each epoch with replacement, weight 1 / count(class).
    `num_threads` caps the tf.data threads (default: all cores); `prefetch` batches are prepared
    ahead.
    """
    builders = [_prepared_builder(member, data_dir) for member in union_members(name)]
    process_index, process_count = _process(process_index, process_count)
    local = sampling.local_batch_size(global_batch_size, process_count)
    labels = np.concatenate([_split_labels(builder, split) for builder in builders])
    order = sampling.TrainOrder(labels, seed, options["balanced_sampling"])
    records = _Records([_records(builder, split) for builder in builders])

    def read_step(step: np.int64) -> tuple[np.ndarray, np.ndarray]:
        rows = sampling.local_rows(int(step), global_batch_size, process_index, process_count)
        indices, epochs, positions = order.lookup(rows)
        keys = sampling.augmentation_keys(seed, epochs, positions)
        return np.array(records.get(indices), object), keys

    def augment_example(example: dict[str, tf.Tensor], key: tf.Tensor):
        image = augment.train_image(
            example[IMAGE], key, image_size, scale=tuple(options["crop_scale"]),
            ratio=tuple(options["crop_ratio"]), flip_prob=options["flip_prob"],
            erasing_prob=options["random_erasing"], erasing_scale=tuple(options["erasing_scale"]))
        return {"image": image, "label": tf.cast(example[LABEL], tf.int32)}

    def read(step: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        serialized, keys = tf.numpy_function(read_step, [step], [tf.string, tf.int64], stateful=False)
        return _parse(tf.ensure_shape(serialized, [local])), tf.ensure_shape(keys, [local, 2])

    steps = (tf.data.Dataset.counter(start_step, dtype=tf.int64) if num_steps is None
             else tf.data.Dataset.range(start_step, start_step + num_steps, dtype=tf.int64))
    examples = steps.map(read).unbatch()
    return _numpy_batches(examples, augment_example, local, num_threads, prefetch)


def eval_iterator(name: str, data_dir: str | None = None, *, split: str | None = None,
                  image_size: int, global_batch_size: int, label_map: Sequence[int] | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  num_threads: int | None = None, prefetch: int = 2) -> Iterator[Batch]:
    """This process's share of every batch of `split` (default: the dataset's eval split), resized
    to `image_size`, each example with its position in the split ('index'). `label_map` gives per
    class of the dataset the label its examples are evaluated as (a model's class), -1 to leave
    them out (default: every example, with its own label). Every process yields ceil(n / B)
    batches; across processes each example appears exactly once with mask 1, and the padding of
    the last batch has mask 0."""
    builder = _prepared_builder(name, data_dir)
    split = _check_split(builder, split or builder.EVAL_SPLIT)
    process_index, process_count = _process(process_index, process_count)
    local = sampling.local_batch_size(global_batch_size, process_count)
    label_map = np.arange(builder.num_classes) if label_map is None else np.asarray(label_map, np.int64)
    if label_map.shape != (builder.num_classes,):
        raise ValueError(f"label_map needs one label per class of {name} ({builder.num_classes}), got {len(label_map)}")
    kept = np.flatnonzero(label_map[_split_labels(builder, split)] >= 0)
    num_batches = sampling.steps_per_epoch(len(kept), global_batch_size)
    records = _records(builder, split)
    labels = tf.constant(label_map, tf.int32)

    def rows(batch: int) -> np.ndarray:  # only the last batch can hold fewer than `local`
        indices, valid = sampling.eval_rows(batch, global_batch_size, process_index, process_count,
                                            len(kept))
        return kept[indices[valid]]

    def read_rows(batch: np.int64) -> tuple[np.ndarray, np.ndarray]:
        indices = rows(int(batch))
        return np.array(_get(records, indices), object), indices.astype(np.int64)

    def read(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        serialized, indices = tf.numpy_function(read_rows, [batch], [tf.string, tf.int64], stateful=False)
        return {**_parse(tf.ensure_shape(serialized, [None])), INDEX: tf.ensure_shape(indices, [None])}

    def prepare(example: dict[str, tf.Tensor]):
        return {"image": augment.eval_image(example[IMAGE], image_size),
                "label": tf.gather(labels, tf.cast(example[LABEL], tf.int32)),
                INDEX: tf.cast(example[INDEX], tf.int32)}

    examples = tf.data.Dataset.range(num_batches).map(read).unbatch()
    batches = _numpy_batches(examples, prepare, local, num_threads, prefetch)
    empty = {"image": np.zeros((0, image_size, image_size, 3), np.float32), "label": np.zeros(0, np.int32),
             INDEX: np.zeros(0, np.int32)}
    return (pad_batch(next(batches) if len(rows(batch)) else empty, local) for batch in range(num_batches))


def file_names(name: str, data_dir: str | None, split: str, indices: Sequence[int],
               chunk: int = 1024) -> list[str]:
    """The source file names (relative to the dataset's root) of the examples at `indices` of
    dataset `name`'s `split`."""
    builder = _prepared_builder(name, data_dir)
    records = _records(builder, _check_split(builder, split))
    feature = {FILE_NAME: tf.io.FixedLenFeature([], tf.string, default_value="")}
    indices = np.asarray(indices, np.int64)
    names: list[str] = []
    for start in range(0, len(indices), chunk):
        serialized = _get(records, indices[start:start + chunk])
        names += [n.decode() for n in tf.io.parse_example(serialized, feature)[FILE_NAME].numpy()]
    return names


def split_images(name: str, data_dir: str | None, split: str | None = None, limit: int | None = None
                 ) -> tuple[int, Iterator[np.ndarray]]:
    """(how many, the images): the first `limit` (None: all) images of dataset `name`'s `split`
    (default: its train split), in order, decoded as evaluation decodes them ((H, W, 3) uint8, each
    at its stored size)."""
    builder = _prepared_builder(name, data_dir)
    records = _records(builder, _check_split(builder, split or "train"))
    count = len(records) if limit is None else min(limit, len(records))

    def images() -> Iterator[np.ndarray]:
        for start in range(0, count, 64):
            for serialized in _get(records, np.arange(start, min(start + 64, count))):
                yield augment.decode_image(_parse(tf.constant([serialized]))[IMAGE][0]).numpy()

    return count, images()


_FEATURES = {IMAGE: tf.io.FixedLenFeature([], tf.string, default_value=""),
             LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=0)}


def _parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    return tf.io.parse_example(serialized, _FEATURES)


def _get(records, indices: np.ndarray) -> list[bytes]:
    """The serialized records at `indices` (a NumPy array of bytes would drop trailing zeros)."""
    return records.__getitems__(indices.tolist()) if len(indices) else []


class _Records:
    """Random access to the serialized examples of several datasets' splits, one after another."""

    def __init__(self, sources: list):
        self.sources = sources
        self.starts = np.cumsum([0] + [len(source) for source in sources])

    def get(self, indices: np.ndarray) -> list[bytes]:
        """The records at `indices` into the concatenation, in that order."""
        source = np.searchsorted(self.starts, indices, side="right") - 1
        found: list[bytes] = [b""] * len(indices)
        for k in np.unique(source):
            rows = np.flatnonzero(source == k)
            for row, record in zip(rows, _get(self.sources[k], indices[rows] - self.starts[k])):
                found[row] = record
        return found


def _numpy_batches(examples: tf.data.Dataset, prepare: Callable, batch_size: int, num_threads: int | None,
                   prefetch: int) -> Iterator[Batch]:
    """`prepare` mapped over `examples` by `num_threads` threads (default: all cores), in order,
    batched (a last partial batch included) and `prefetch` batches ahead, as NumPy arrays.

    tf.data's autotuning is off: its model thread sleeps for up to a minute between rounds and a
    dropped iterator waits for it, which held finished runs for as long before they exited.
    """
    threads = num_threads or os.cpu_count() or 1
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from the map instead
    batches = examples.map(prepare, num_parallel_calls=threads).batch(batch_size).prefetch(prefetch)
    return batches.with_options(options).as_numpy_iterator()


def _process(index: int | None, count: int | None) -> tuple[int, int]:
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, {count})")
    return index, count


def _prepared_builder(name: str, data_dir: str | None) -> FerBuilder:
    """The builder of a prepared dataset; synthetic_faces is generated on first use (TFDS's
    messages go to stderr: stdout is the tools' output). Raises DataDirError naming `data_dir`
    when it is a file, or cannot be written to generate one."""
    check_data_dir(data_dir)
    builder = make_builder(name, data_dir)
    if builder.is_prepared():
        return builder
    if isinstance(builder, SyntheticFaces):
        check_data_dir(data_dir, writable=True)
        with _lock(Path(resolve_data_dir(data_dir)) / f".{name.replace('/', '_')}.lock"):
            builder = make_builder(name, data_dir)
            if not builder.is_prepared():  # another process may have built it meanwhile
                with contextlib.redirect_stdout(sys.stderr):
                    builder.download_and_prepare(
                        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        return make_builder(name, data_dir)
    base, _ = split_name(name)
    manual_dir = default_manual_dir(data_dir, base)
    raise DatasetNotFoundError(
        f"dataset {name} is not prepared in {resolve_data_dir(data_dir)}; prepare it with python -m "
        f"manet_jax.data.prepare --dataset {name} --manual-dir {manual_dir} --data-dir {resolve_data_dir(data_dir)} "
        f"(the files{': ' + builder.HOMEPAGE if builder.HOMEPAGE else ''}; run without them, it says which ones and "
        "where they go)")


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_split(builder: FerBuilder, split: str) -> str:
    if split not in builder.info.splits:
        raise DatasetNameError(
            f"{builder.name} has no split {split!r}; splits: {list(builder.info.splits)}")
    return split


def _split_labels(builder: FerBuilder, split: str) -> np.ndarray:
    labels = builder.info.metadata[LABELS_METADATA][_check_split(builder, split)]
    return np.asarray(labels, np.int64)


def _records(builder: FerBuilder, split: str):
    """Random access to the serialized examples of `split`."""
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise DatasetNotFoundError(f"{builder.data_dir} holds {builder.info.file_format} files; rebuild it "
                         "with file_format='array_record' (the default of `prepare`).")
    return builder.as_data_source(split).data_source
