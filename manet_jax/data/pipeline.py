"""Host input pipelines: dataset info, the infinite training iterator and the eval iterator.

Batches are dicts of NumPy arrays sized per process: 'image' float32 (B / P, size, size, 3) and
'label' int32 (B / P,), plus 'mask' float32 for evaluation. Examples are read by random access
from the prepared ArrayRecord files (see `sampling` for which examples a step holds) and decoded
and augmented by a parallel, deterministic tf.data map (see `augment`). Each example's
augmentation is seeded by (seed, epoch, position), so resuming at a step reproduces the
uninterrupted stream exactly without decoding the skipped images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from manet_jax.data import augment, sampling
from manet_jax.data.errors import DatasetNotFoundError
from manet_jax.data.fer_builder import IMAGE, LABEL, LABELS_METADATA, SKIPPED_METADATA, FerBuilder
from manet_jax.data.locations import default_manual_dir, resolve_data_dir
from manet_jax.data.registry import make_builder, split_name
from manet_jax.data.synthetic_faces import SyntheticFaces

try:  # Keep TensorFlow off the accelerators: JAX owns them, tf.data runs on the host.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices
    pass

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a prepared dataset."""

    name: str
    dataset_dir: str  # the prepared dataset's own folder, <data_dir>/<name>/<config>/<version>
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]  # split -> number of examples
    train_split: str
    eval_split: str
    class_counts: list[int]  # per class, in the train split
    skipped_files: dict[str, list[tuple[str, str]]]  # split -> (file, reason) left out at build


def dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Info on dataset `name` (e.g. 'raf_db', 'affectnet/8', 'synthetic_faces/64').

    synthetic_faces is generated on first use. Raises DatasetNotFoundError, with the command that
    prepares it, when another dataset has not been prepared in `data_dir`.
    """
    builder = _prepared_builder(name, data_dir)
    labels = _split_labels(builder, builder.TRAIN_SPLIT)
    counts = np.bincount(labels, minlength=builder.num_classes)
    metadata = builder.info.metadata
    return DatasetInfo(
        name=name,
        dataset_dir=os.fspath(builder.data_dir),
        num_classes=builder.num_classes,
        class_names=tuple(builder.info.features[LABEL].names),
        splits={split: info.num_examples for split, info in builder.info.splits.items()},
        train_split=builder.TRAIN_SPLIT,
        eval_split=builder.EVAL_SPLIT,
        class_counts=counts.tolist(),
        skipped_files={s: [tuple(b) for b in bad] for s, bad in metadata[SKIPPED_METADATA].items()},
    )


def steps_per_epoch(info_or_num_examples: DatasetInfo | int, global_batch_size: int) -> int:
    """Steps in one pass over the train split (the last partial batch counts as a step)."""
    n = (info_or_num_examples.splits[info_or_num_examples.train_split]
         if isinstance(info_or_num_examples, DatasetInfo) else info_or_num_examples)
    return sampling.steps_per_epoch(n, global_batch_size)


def train_iterator(name: str, data_dir: str | None = None, *, split: str = "train",
                   image_size: int, global_batch_size: int, seed: int, start_step: int = 0,
                   balanced: bool = False, process_index: int | None = None,
                   process_count: int | None = None, imagenet_normalize: bool = False,
                   random_erasing: float = 0.0,
                   erasing_scale: tuple[float, float] = augment.ERASING_SCALE,
                   crop_scale: tuple[float, float] = augment.RRC_SCALE,
                   crop_ratio: tuple[float, float] = augment.RRC_RATIO, flip_prob: float = 0.5,
                   num_threads: int | None = None, prefetch: int = 2) -> Iterator[Batch]:
    """Infinite iterator over this process's share of the training batches from `start_step`.

    Augmentation: RandomResizedCrop(image_size, crop_scale, crop_ratio), horizontal flip with
    `flip_prob`, [0, 1] scaling; optionally ImageNet normalisation and RandomErasing with
    probability `random_erasing` (after normalising, value 0). `balanced` draws each epoch
    with replacement, weight 1 / count(class). `num_threads` caps the tf.data threads
    (default: all cores); `prefetch` batches are prepared ahead.
    """
    builder = _prepared_builder(name, data_dir)
    process_index, process_count = _process(process_index, process_count)
    local = sampling.local_batch_size(global_batch_size, process_count)
    order = sampling.TrainOrder(_split_labels(builder, split), seed, balanced)
    records = _records(builder, split)

    def read_step(step: np.int64) -> tuple[np.ndarray, np.ndarray]:
        rows = sampling.local_rows(int(step), global_batch_size, process_index, process_count)
        indices, epochs, positions = order.lookup(rows)
        keys = sampling.augmentation_keys(seed, epochs, positions)
        return np.array(_get(records, indices), object), keys

    def augment_example(example: dict[str, tf.Tensor], key: tf.Tensor):
        image = augment.train_image(
            example[IMAGE], key, image_size, scale=crop_scale, ratio=crop_ratio,
            flip_prob=flip_prob, normalize=imagenet_normalize, erasing_prob=random_erasing,
            erasing_scale=erasing_scale)
        return {"image": image, "label": tf.cast(example[LABEL], tf.int32)}

    steps = tf.data.Dataset.counter(start_step, dtype=tf.int64)
    examples = steps.map(lambda s: _read(read_step, s, local, tf.int64, [local, 2])).unbatch()
    batches = (examples.map(augment_example, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(local, drop_remainder=True))
    return _numpy_iterator(batches, num_threads, prefetch)


def eval_iterator(name: str, data_dir: str | None = None, *, split: str | None = None,
                  image_size: int, global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None, imagenet_normalize: bool = False,
                  num_threads: int | None = None, prefetch: int = 2) -> Iterator[Batch]:
    """This process's share of every batch of `split` (default: the dataset's eval split), resized
    to `image_size`. Every process yields ceil(n / B) batches; across processes each example
    appears exactly once with mask 1, and the padding of the last batch has mask 0."""
    builder = _prepared_builder(name, data_dir)
    split = _check_split(builder, split or builder.EVAL_SPLIT)
    process_index, process_count = _process(process_index, process_count)
    local = sampling.local_batch_size(global_batch_size, process_count)
    num_examples = builder.info.splits[split].num_examples
    records = _records(builder, split)

    def read_batch(batch: np.int64) -> tuple[np.ndarray, np.ndarray]:
        indices, valid = sampling.eval_rows(int(batch), global_batch_size, process_index,
                                            process_count, num_examples)
        serialized = [b""] * local
        for row, record in zip(np.flatnonzero(valid), _get(records, indices[valid])):
            serialized[row] = record
        return np.array(serialized, object), valid

    def prepare(example: dict[str, tf.Tensor], valid: tf.Tensor):
        image = tf.cond(valid,
                        lambda: augment.eval_image(example[IMAGE], image_size, imagenet_normalize),
                        lambda: tf.zeros([image_size, image_size, 3]))
        return {"image": image, "label": tf.cast(example[LABEL], tf.int32),
                "mask": tf.cast(valid, tf.float32)}

    num_batches = sampling.steps_per_epoch(num_examples, global_batch_size)
    batch_ids = tf.data.Dataset.range(num_batches)
    examples = batch_ids.map(lambda b: _read(read_batch, b, local, tf.bool, [local])).unbatch()
    batches = examples.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(local)
    return _numpy_iterator(batches, num_threads, prefetch)


_FEATURES = {IMAGE: tf.io.FixedLenFeature([], tf.string, default_value=""),
             LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=0)}


def _read(read_fn, index: tf.Tensor, local: int, extra_dtype: tf.DType, extra_shape: list[int]
          ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Runs `read_fn(index)` -> (serialized records, extra) in Python; parses the records."""
    serialized, extra = tf.numpy_function(read_fn, [index], [tf.string, extra_dtype],
                                          stateful=False)
    examples = tf.io.parse_example(tf.ensure_shape(serialized, [local]), _FEATURES)
    return examples, tf.ensure_shape(extra, extra_shape)


def _get(records, indices: np.ndarray) -> list[bytes]:
    """The serialized records at `indices` (a NumPy array of bytes would drop trailing zeros)."""
    return records.__getitems__(indices.tolist()) if len(indices) else []


def _numpy_iterator(batches: tf.data.Dataset, num_threads: int | None, prefetch: int
                    ) -> Iterator[Batch]:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = num_threads or os.cpu_count() or 1
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from the map instead
    return batches.prefetch(prefetch).with_options(options).as_numpy_iterator()


def _process(index: int | None, count: int | None) -> tuple[int, int]:
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is not in [0, {count})")
    return index, count


def _prepared_builder(name: str, data_dir: str | None) -> FerBuilder:
    """The builder of a prepared dataset; synthetic_faces is generated on first use."""
    builder = make_builder(name, data_dir)
    if builder.is_prepared():
        return builder
    if isinstance(builder, SyntheticFaces):
        with _lock(Path(resolve_data_dir(data_dir)) / f".{name.replace('/', '_')}.lock"):
            builder = make_builder(name, data_dir)
            if not builder.is_prepared():  # another process may have built it meanwhile
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        return make_builder(name, data_dir)
    base, _ = split_name(name)
    manual_dir = default_manual_dir(data_dir, base)
    raise DatasetNotFoundError(
        f"dataset {name} is not prepared in {resolve_data_dir(data_dir)}. Download it as described "
        f"below, then run:\n  python -m manet_jax.data.prepare --dataset {name} --manual_dir "
        f"{manual_dir} --data_dir {resolve_data_dir(data_dir)}\n"
        f"{tfds.core.utils.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)}")


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
        raise ValueError(
            f"{builder.name} has no split {split!r}; splits: {list(builder.info.splits)}")
    return split


def _split_labels(builder: FerBuilder, split: str) -> np.ndarray:
    labels = builder.info.metadata[LABELS_METADATA][_check_split(builder, split)]
    return np.asarray(labels, np.int64)


def _records(builder: FerBuilder, split: str):
    """Random access to the serialized examples of `split`."""
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(f"{builder.data_dir} holds {builder.info.file_format} files; rebuild it "
                         "with file_format='array_record' (the default of `prepare`).")
    return builder.as_data_source(split).data_source
