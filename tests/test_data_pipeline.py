"""Sampling, sharding, resumption and evaluation completeness of the host input pipelines."""

from __future__ import annotations

import itertools

import data_fixtures as fx
import numpy as np
import pytest

from manet_jax.data import pipeline, sampling
from manet_jax.data.errors import DatasetNotFoundError
from manet_jax.data.locations import default_data_dir, default_manual_dir
from manet_jax.data.options import input_config
from manet_jax.data.registry import make_builder, split_name

SYNTH = "synthetic_faces/24_70_14"  # 70 train (10 per class) and 14 test images of 24 px
UNION = f"{SYNTH}+image_folder/7"  # 70 + 20 train images


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data dir holding SYNTH (generated on first use), an imbalanced image_folder/7, an
    image_folder/8 of one image per class and split, and a FED-RO of two images per class."""
    root = tmp_path_factory.mktemp("data")
    pipeline.dataset_info(SYNTH, str(root))
    fx.make_class_folders(root / "manual", {"train": "train", "test": "test"},
                          {str(k): k for k in range(7)}, ".png", {"train": 1, "test": 1},
                          size=(16, 16))
    fx.make_class_folders(root / "manual", {"train": "train"}, {"0": 0}, ".png",
                          {"train": 14}, seed=1, size=(16, 16))  # class 0: 14 of 20 train images
    fx.build("image_folder/7", root, root / "manual")
    fx.make_class_folders(root / "manual8", {"train": "train", "test": "test"}, {str(k): k for k in range(8)},
                          ".png", {"train": 1, "test": 1}, seed=2, size=(16, 16))
    fx.build("image_folder/8", root, root / "manual8")
    fx.make_class_folders(root / "manual_fed_ro", {"test": "FED_RO"}, fx.FED_RO_FOLDERS, ".jpg", {"test": 2})
    fx.build("fed_ro", root, root / "manual_fed_ro")
    return str(root)


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def train(data_dir, name=SYNTH, **kwargs):
    """The training iterator; keyword arguments that name input options (see `input_config`) set them."""
    options = input_config()
    options.update({key: kwargs.pop(key) for key in list(kwargs) if key in options})
    defaults = {"image_size": 24, "global_batch_size": 8, "seed": 3, "process_index": 0,
                "process_count": 1}
    return pipeline.train_iterator(name, data_dir, options=options, **{**defaults, **kwargs})


def test_dataset_info(data_dir):
    info = pipeline.dataset_info(SYNTH, data_dir)
    assert info.num_classes == 7 and info.class_names == tuple(fx.CANONICAL)[:7]
    assert info.splits == {"train": 70, "test": 14}
    assert (info.train_split, info.eval_split) == ("train", "test")
    assert info.class_counts == {"train": [10] * 7, "test": [2] * 7}
    assert pipeline.steps_per_epoch(info, 8) == pipeline.steps_per_epoch(70, 8) == 9
    assert pipeline.dataset_info("image_folder/7", data_dir).class_counts["train"] == [14, 1, 1, 1, 1, 1, 1]


def test_missing_manual_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        pipeline.dataset_info("affectnet/8", str(tmp_path))
    assert isinstance(e.value, FileNotFoundError)
    manual = default_manual_dir(str(tmp_path), "affectnet")
    assert (f"python -m manet_jax.data.prepare --dataset affectnet/8 --manual-dir {manual}"
            in str(e.value))
    assert "mohammadmahoor.com/affectnet" in str(e.value)


def test_default_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("MANET_DATA_DIR", str(tmp_path))
    assert default_data_dir() == str(tmp_path)
    assert default_manual_dir(None, "raf_db") == str(tmp_path / "downloads/manual/raf_db")
    monkeypatch.delenv("MANET_DATA_DIR")
    assert default_data_dir().endswith("data") or default_data_dir().endswith("tensorflow_datasets")


def test_dataset_names():
    assert split_name("affectnet/7") == ("affectnet", "7")
    assert split_name("raf_db") == ("raf_db", None)
    with pytest.raises(ValueError, match="needs a config: affectnet/7, affectnet/8"):
        split_name("affectnet")
    with pytest.raises(ValueError, match="unknown dataset 'rafdb'"):
        split_name("rafdb")
    with pytest.raises(ValueError, match="<size>_<num_train>_<num_test>"):
        make_builder("synthetic_faces/big")
    assert make_builder("synthetic_faces").builder_config.size == 64
    assert make_builder("synthetic_faces/112").builder_config.num_train == 4200


def test_train_batches(data_dir):
    batch = next(train(data_dir, global_batch_size=6, process_count=2, process_index=1))
    assert batch["image"].shape == (3, 24, 24, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (3,) and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    with pytest.raises(ValueError, match="multiple of the process count 4"):
        train(data_dir, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="no split 'validation'; splits: \\['train', 'test'\\]"):
        pipeline.eval_iterator(SYNTH, data_dir, split="validation", image_size=24,
                               global_batch_size=8)


def test_global_batch_does_not_depend_on_process_count(data_dir):
    # Steps 7-9 of batch 8 cross the end of the first epoch (70 examples).
    reference = take(train(data_dir, start_step=7), 3)
    for count in (2, 4):
        shards = [take(train(data_dir, start_step=7, process_index=p, process_count=count), 3)
                  for p in range(count)]
        for step, expected in enumerate(reference):
            for key in ("image", "label"):
                joined = np.concatenate([shard[step][key] for shard in shards])
                np.testing.assert_array_equal(joined, expected[key])


def test_resuming_reproduces_the_uninterrupted_stream(data_dir):
    full = take(train(data_dir, random_erasing=0.5), 12)
    resumed = take(train(data_dir, random_erasing=0.5, start_step=9), 3)
    for a, b in zip(full[9:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other_seed = next(train(data_dir, seed=4))
    assert not np.array_equal(other_seed["image"], full[0]["image"])


def test_train_stream_follows_the_seeded_epochs(data_dir):
    """With crops of the whole image and no flip, a train view equals the eval view, so the
    images identify which examples each step holds."""
    evaluated = next(pipeline.eval_iterator(SYNTH, data_dir, image_size=24, global_batch_size=70,
                                            split="train", process_index=0, process_count=1))
    batches = take(train(data_dir, global_batch_size=10, crop_scale=(1, 1), crop_ratio=(1, 1),
                         flip_prob=0.0), 14)
    labels = np.asarray(make_builder(SYNTH, data_dir).info.metadata["labels"]["train"])
    order = sampling.TrainOrder(labels, seed=3)
    for step, batch in enumerate(batches):
        indices, _, _ = order.lookup(np.arange(step * 10, step * 10 + 10))
        np.testing.assert_array_equal(batch["image"], evaluated["image"][indices])
        np.testing.assert_array_equal(batch["label"], labels[indices])
    first_epoch, _, _ = order.lookup(np.arange(70))
    assert sorted(first_epoch) == list(range(70))


def evaluated_train_images(data_dir, name, image_size):
    """Every train image of dataset `name`, in order, as the eval pipeline resizes it."""
    info = pipeline.dataset_info(name, data_dir)
    return next(pipeline.eval_iterator(name, data_dir, split="train", image_size=image_size,
                                       global_batch_size=info.splits["train"], process_index=0,
                                       process_count=1))


def test_union_info(data_dir):
    info = pipeline.dataset_info(UNION, data_dir)
    assert info.name == UNION and info.class_names == tuple(fx.CANONICAL)[:7] and len(info.dataset_dirs) == 2
    assert info.splits == {"train": 90, "test": 21} and (info.train_split, info.eval_split) == ("train", "test")
    assert info.class_counts["train"] == [24, 11, 11, 11, 11, 11, 11]
    assert pipeline.steps_per_epoch(info, 10) == 9
    with pytest.raises(ValueError, match=r"must have the same classes: synthetic_faces/24_70_14 has \[.*\], "
                                         r"image_folder/8 \[.*'Contempt'\]"):
        pipeline.dataset_info(f"{SYNTH}+image_folder/8", data_dir)
    with pytest.raises(ValueError, match="fed_ro has no train split"):
        pipeline.dataset_info(f"{SYNTH}+fed_ro", data_dir)
    with pytest.raises(ValueError, match="names a dataset twice"):
        pipeline.dataset_info(f"{SYNTH}+{SYNTH}", data_dir)


def test_union_stream_shows_every_example_of_every_dataset_once_per_epoch(data_dir):
    """As above: the train views identify the examples, here across the union's two datasets."""
    evaluated = np.concatenate([evaluated_train_images(data_dir, name, 24)["image"]
                                for name in (SYNTH, "image_folder/7")])
    whole = {"crop_scale": (1, 1), "crop_ratio": (1, 1), "flip_prob": 0.0}
    batches = take(train(data_dir, UNION, global_batch_size=10, balanced_sampling=False, **whole), 18)
    labels = np.concatenate([np.asarray(make_builder(name, data_dir).info.metadata["labels"]["train"])
                             for name in (SYNTH, "image_folder/7")])
    order = sampling.TrainOrder(labels, seed=3)
    shown = []
    for step, batch in enumerate(batches):
        indices, _, _ = order.lookup(np.arange(step * 10, step * 10 + 10))
        np.testing.assert_array_equal(batch["image"], evaluated[indices])
        np.testing.assert_array_equal(batch["label"], labels[indices])
        shown.append(indices)
    epochs = np.concatenate(shown).reshape(2, 90)
    assert all(sorted(epoch) == list(range(90)) for epoch in epochs)  # both datasets, every example once
    assert not np.array_equal(epochs[0], epochs[1])
    # Any process count gives the same global batches, and a resumed stream continues exactly.
    halves = [take(train(data_dir, UNION, global_batch_size=10, start_step=8, process_index=p, process_count=2),
                   2) for p in range(2)]
    resumed = take(train(data_dir, UNION, global_batch_size=10, start_step=8), 2)
    full = take(train(data_dir, UNION, global_batch_size=10), 10)[8:]
    for step in range(2):
        np.testing.assert_array_equal(np.concatenate([h[step]["image"] for h in halves]), full[step]["image"])
        np.testing.assert_array_equal(resumed[step]["image"], full[step]["image"])


def test_eval_of_a_model_with_fewer_classes_leaves_the_others_out(data_dir):
    """A 7-class model on an 8-class test split: the Contempt example is left out, the rest seen once."""
    batches = list(pipeline.eval_iterator("image_folder/8", data_dir, image_size=16, global_batch_size=4,
                                          label_map=[*range(7), -1], process_index=0, process_count=1))
    assert len(batches) == 2
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [1.0] * 7 + [0.0]
    assert np.concatenate([b["label"] for b in batches])[:7].tolist() == list(range(7))
    everything = list(pipeline.eval_iterator("image_folder/8", data_dir, image_size=16, global_batch_size=4,
                                             process_index=0, process_count=1))
    assert np.concatenate([b["label"] for b in everything]).tolist() == list(range(8))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:7],
                                  np.concatenate([b["image"] for b in everything])[:7])


def test_eval_examples_are_relabelled_and_carry_their_index(data_dir):
    """A label map relabels (here: reverses the first 7 classes, Contempt counted as 0); each example
    carries its position in the split, whose file name `file_names` reads."""
    label_map = [6, 5, 4, 3, 2, 1, 0, 0]
    batch = next(pipeline.eval_iterator("image_folder/8", data_dir, image_size=16, global_batch_size=8,
                                        label_map=label_map, process_index=0, process_count=1))
    builder = make_builder("image_folder/8", data_dir)
    assert batch["index"].tolist() == list(range(8))
    assert batch["label"].tolist() == [label_map[label] for label in builder.info.metadata["labels"]["test"]]
    stored = [example["file_name"] for example in fx.read_split(builder, "test")]
    assert pipeline.file_names("image_folder/8", data_dir, "test", [7, 0]) == [stored[7], stored[0]]
    with pytest.raises(ValueError, match="one label per class of image_folder/8"):
        pipeline.eval_iterator("image_folder/8", data_dir, image_size=16, global_batch_size=8, label_map=[0] * 7)


def test_train_order_epochs():
    labels = np.repeat(np.arange(3), [80, 15, 5])
    order = sampling.TrainOrder(labels, seed=0)
    epochs = [order.epoch(e) for e in range(3)]
    assert all(sorted(e) == list(range(100)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(sampling.TrainOrder(labels, seed=0).epoch(2), epochs[2])
    indices, epoch, position = order.lookup(np.array([99, 100, 250]))
    assert epoch.tolist() == [0, 1, 2] and position.tolist() == [99, 0, 50]
    assert indices.tolist() == [epochs[0][99], epochs[1][0], epochs[2][50]]


def test_balanced_sampling_frequencies():
    labels = np.repeat(np.arange(3), [80, 15, 5])
    order = sampling.TrainOrder(labels, seed=0, balanced=True)
    draws = np.concatenate([order.epoch(e) for e in range(300)])  # 30,000 draws of 100 per epoch
    assert len(order.epoch(0)) == 100 and len(set(order.epoch(0))) < 100  # with replacement
    frequencies = np.bincount(labels[draws]) / len(draws)
    np.testing.assert_allclose(frequencies, [1 / 3] * 3, atol=0.015)  # ~5 sigma
    within_class = np.bincount(draws[labels[draws] == 2], minlength=100)[95:]
    assert within_class.min() > 0.8 * within_class.mean()  # uniform inside a class
    np.testing.assert_array_equal(
        sampling.TrainOrder(labels, seed=0, balanced=True).epoch(7), order.epoch(7))


def test_balanced_pipeline(data_dir):
    info = pipeline.dataset_info("image_folder/7", data_dir)  # class 0 holds 14 of 20 images
    batches = take(train(data_dir, "image_folder/7", global_batch_size=10, image_size=16,
                         balanced_sampling=True), 40)
    labels = np.concatenate([b["label"] for b in batches])
    counts = np.bincount(labels, minlength=7)
    assert info.class_counts["train"][0] == 14 and counts[0] < 0.3 * len(labels)  # ~1/7, not 14/20
    plain = np.concatenate([b["label"] for b in take(
        train(data_dir, "image_folder/7", global_batch_size=10, image_size=16), 40)])
    assert np.bincount(plain, minlength=7)[0] == 14 * 20  # 20 epochs of 20 images


@pytest.mark.parametrize("batch_size", [6, 12])
def test_eval_sees_every_example_once(data_dir, batch_size):
    reference = list(pipeline.eval_iterator(SYNTH, data_dir, image_size=20,
                                            global_batch_size=batch_size, process_index=0,
                                            process_count=1))
    assert len(reference) == pipeline.steps_per_epoch(14, batch_size)
    labels = make_builder(SYNTH, data_dir).info.metadata["labels"]["test"]
    mask = np.concatenate([b["mask"] for b in reference])
    assert mask.dtype == np.float32 and mask.tolist() == [1.0] * 14 + [0.0] * (len(mask) - 14)
    assert np.concatenate([b["label"] for b in reference])[:14].tolist() == labels
    images = np.concatenate([b["image"] for b in reference])
    assert images.shape[1:] == (20, 20, 3) and not images[14:].any()  # padding is zeros
    assert len({img.tobytes() for img in images[:14]}) == 14
    for count in (2, 3):
        shards = [list(pipeline.eval_iterator(SYNTH, data_dir, image_size=20,
                                              global_batch_size=batch_size, process_index=p,
                                              process_count=count)) for p in range(count)]
        assert all(len(shard) == len(reference) for shard in shards)
        for step, expected in enumerate(reference):
            for key in ("image", "label", "mask"):
                joined = np.concatenate([shard[step][key] for shard in shards])
                np.testing.assert_array_equal(joined, expected[key])
