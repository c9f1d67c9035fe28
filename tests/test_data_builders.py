"""Each TFDS builder built from tiny fabricated files in the dataset's real layout."""

from __future__ import annotations

import shutil

import data_fixtures as fx
import numpy as np
import pytest
import tensorflow_datasets as tfds

from manet_jax.data.builder_base import FILE_NAME, IMAGE, LABEL
from manet_jax.data.errors import BadImageFilesError, ManualFilesError

tfds.disable_progress_bar()

# CAER-S and SFEW class folders -> canonical labels.
FOLDERS = {"Angry": 6, "Disgust": 5, "Fear": 4, "Happy": 1, "Neutral": 0, "Sad": 2, "Surprise": 3}


def check_split(builder, split, expected, exact_bytes_from=None):
    """The split holds exactly `expected` ({file_name: (label, pixels)}), in any order."""
    examples = fx.read_split(builder, split)
    assert sorted(ex[FILE_NAME] for ex in examples) == sorted(expected)
    for ex in examples:
        label, pixels = expected[ex[FILE_NAME]]
        assert ex[LABEL] == label, ex[FILE_NAME]
        np.testing.assert_array_equal(fx.decode(ex[IMAGE]), pixels)
        if exact_bytes_from is not None:  # JPEG/PNG files are stored untouched
            assert ex[IMAGE] == (exact_bytes_from / ex[FILE_NAME]).read_bytes()
    assert builder.info.splits[split].num_examples == len(expected)
    assert builder.info.metadata["labels"][split] == [ex[LABEL] for ex in examples]


def test_raf_db(tmp_path):
    expected = fx.make_raf_db(tmp_path / "manual", {"train": 3, "test": 2})
    builder = fx.build("raf_db", tmp_path / "data", tmp_path / "manual")
    for split in ("train", "test"):
        check_split(builder, split, expected[split], exact_bytes_from=tmp_path / "manual/basic")
    assert builder.info.features[LABEL].names == list(fx.CANONICAL)[:7]
    # Label-file code 1 (Surprise) -> canonical 3, code 7 (Neutral) -> canonical 0.
    assert expected["train"]["Image/aligned/train_00001_aligned.jpg"][0] == 3
    assert expected["train"]["Image/aligned/train_00021_aligned.jpg"][0] == 0


@pytest.mark.parametrize("config", ["7", "8"])
def test_affectnet_original_release(tmp_path, config):
    rows = fx.make_affectnet_original(tmp_path / "manual")
    builder = fx.build(f"affectnet/{config}", tmp_path / "data", tmp_path / "manual")
    for split in ("train", "test"):
        kept = [r for r in rows[split] if r["code"] < int(config)]
        examples = {ex[FILE_NAME]: ex for ex in fx.read_split(builder, split)}
        assert sorted(examples) == sorted(r["name"] for r in kept)
        for row in kept:
            ex = examples[row["name"]]
            assert ex[LABEL] == row["code"]  # AffectNet codes are the canonical indices
            crop = fx.decode(ex[IMAGE])
            assert crop.shape == row["crop"].shape  # cropped with the CSV box, clipped
            assert np.abs(crop.astype(int) - row["crop"]).mean() < 3  # JPEG re-encoding
    assert builder.info.features[LABEL].num_classes == int(config)


def test_affectnet_newer_release(tmp_path):
    expected = fx.make_affectnet_newer(tmp_path / "manual")
    builder = fx.build("affectnet/7", tmp_path / "data", tmp_path / "manual")
    for split in ("train", "test"):
        kept = {k: v for k, v in expected[split].items() if v[0] < 7}
        check_split(builder, split, kept, exact_bytes_from=tmp_path / "manual")


def test_caer_s_with_either_anger_folder_name(tmp_path):
    root = tmp_path / "manual" / "CAER-S"
    expected = fx.make_class_folders(root, {"train": "train", "test": "test"}, FOLDERS, ".png",
                                     {"train": 2, "test": 2})
    builder = fx.build("caer_s", tmp_path / "data", tmp_path / "manual")
    for split in ("train", "test"):
        check_split(builder, split, expected[split], exact_bytes_from=root)

    for split in ("train", "test"):
        (root / split / "Angry").rename(root / split / "Anger")
    builder = fx.build("caer_s", tmp_path / "data2", tmp_path / "manual")
    assert sorted(builder.info.metadata["labels"]["test"]) == sorted(list(range(7)) * 2)


def test_sfew(tmp_path):
    dirs = {"train": "Train/Train_Aligned_Faces", "validation": "Val/Val_Aligned_Faces_new"}
    expected = fx.make_class_folders(tmp_path / "manual", dirs, FOLDERS, ".png",
                                     {"train": 3, "validation": 2}, size=(36, 29))
    (tmp_path / "manual/Test/Test_Aligned_Faces").mkdir(parents=True)  # unlabelled: ignored
    builder = fx.build("sfew", tmp_path / "data", tmp_path / "manual")
    assert set(builder.info.splits) == {"train", "validation"}
    for split in dirs:
        check_split(builder, split, expected[split], exact_bytes_from=tmp_path / "manual")


@pytest.mark.parametrize("config", ["7", "8"])
def test_image_folder(tmp_path, config):
    n = int(config)
    folders = {str(k): k for k in range(n)}
    expected = fx.make_class_folders(tmp_path / "manual", {"train": "train", "test": "test"},
                                     folders, ".jpg", {"train": 2, "test": 2})
    builder = fx.build(f"image_folder/{config}", tmp_path / "data", tmp_path / "manual")
    for split in ("train", "test"):
        check_split(builder, split, expected[split], exact_bytes_from=tmp_path / "manual")
    assert builder.info.features[LABEL].names == list(fx.CANONICAL)[:n]


def test_ferplus_majority_votes_and_splits(tmp_path):
    #                 neu hap sur sad ang dis fea con unk NF
    rows = [("Training", "fer0000000.png", [6, 2, 0, 0, 0, 0, 0, 0, 2, 0]),    # neutral
            ("Training", "fer0000001.png", [0, 0, 4, 1, 0, 0, 3, 0, 0, 0]),    # 4/7 surprise
            ("Training", "fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),   # not a face
            ("Training", "fer0000003.png", [0, 0, 0, 5, 5, 0, 0, 0, 0, 0]),    # tie: unknown
            ("Training", "", [0, 9, 1, 0, 0, 0, 0, 0, 0, 0]),                  # no name: dropped
            ("PublicTest", "fer0000005.png", [0, 0, 0, 0, 1, 1, 1, 7, 0, 0]),  # contempt
            ("PublicTest", "fer0000006.png", [0, 0, 0, 4, 2, 2, 2, 0, 0, 0]),  # 4/10: unknown
            ("PrivateTest", "fer0000007.png", [0, 0, 0, 0, 8, 2, 0, 0, 0, 0]),  # anger
            ("PrivateTest", "fer0000008.png", [1, 0, 0, 0, 0, 0, 3, 0, 0, 0]),  # fear (1 vote cut)
            ("PrivateTest", "fer0000009.png", [0, 0, 0, 0, 0, 0, 0, 0, 6, 4])]  # unknown
    images = fx.make_ferplus(tmp_path / "manual", rows)
    builder = fx.build("ferplus", tmp_path / "data", tmp_path / "manual")
    grey = {name: np.repeat(img[..., None], 3, axis=2) for (_, name, _), img in zip(rows, images)}
    expected = {"train": {"fer0000000.png": 0, "fer0000001.png": 3},
                "validation": {"fer0000005.png": 7},
                "test": {"fer0000007.png": 6, "fer0000008.png": 4}}
    for split, labels in expected.items():
        check_split(builder, split, {n: (label, grey[n]) for n, label in labels.items()})
    assert builder.info.features[LABEL].num_classes == 8


def test_fer2013_original_labels_and_splits(tmp_path):
    # FER2013 codes 0 Angry 1 Disgust 2 Fear 3 Happy 4 Sad 5 Surprise 6 Neutral.
    rows = [("Training", code) for code in range(7)] + [("PublicTest", 6), ("PrivateTest", 0), ("PrivateTest", 3)]
    images = fx.make_fer2013(tmp_path / "manual", rows)
    builder = fx.build("fer2013", tmp_path / "data", tmp_path / "manual")
    grey = [np.repeat(img[..., None], 3, axis=2) for img in images]
    canonical = [6, 5, 4, 1, 2, 3, 0]
    expected = {"train": {f"fer{row:07d}.png": (canonical[row], grey[row]) for row in range(7)},
                "validation": {"fer0000007.png": (0, grey[7])},
                "test": {"fer0000008.png": (6, grey[8]), "fer0000009.png": (1, grey[9])}}
    for split, examples in expected.items():
        check_split(builder, split, examples)
    assert builder.info.features[LABEL].names == list(fx.CANONICAL)[:7]

    fx.make_fer2013(tmp_path / "bad", [("Training", 0), ("Training", 7)])
    with pytest.raises(ManualFilesError, match=r"fer2013.csv:3: expected an emotion code 0-6, got '7'"):
        fx.build("fer2013", tmp_path / "data2", tmp_path / "bad")


def test_fed_ro_class_folders_as_distributed(tmp_path):
    # The archive's own top folder, "neural" for neutral, and a test split only.
    expected = fx.make_class_folders(tmp_path / "manual", {"test": "FED_RO"}, fx.FED_RO_FOLDERS, ".jpg",
                                     {"test": 2}, size=(40, 32))
    builder = fx.build("fed_ro", tmp_path / "data", tmp_path / "manual")
    assert set(builder.info.splits) == {"test"}
    check_split(builder, "test", {name.removeprefix("FED_RO/"): value for name, value in expected["test"].items()},
                exact_bytes_from=tmp_path / "manual/FED_RO")
    assert builder.info.metadata["labels"]["test"].count(0) == 2  # the "neural" folder is Neutral

    (tmp_path / "manual/FED_RO/neural").rename(tmp_path / "manual/FED_RO/neutral")
    assert fx.build("fed_ro", tmp_path / "data2", tmp_path / "manual").info.splits["test"].num_examples == 14
    (tmp_path / "manual/FED_RO/happy").rename(tmp_path / "manual/FED_RO/joy")
    with pytest.raises(ManualFilesError, match=r"unexpected class folder\(s\) \['joy'\]"):
        fx.build("fed_ro", tmp_path / "data3", tmp_path / "manual")


def test_synthetic_faces_is_deterministic_and_balanced(tmp_path):
    a = fx.build("synthetic_faces/24_21_14", tmp_path / "a", None)
    b = fx.build("synthetic_faces/24_21_14", tmp_path / "b", None)
    ex_a, ex_b = fx.read_split(a, "train"), fx.read_split(b, "train")
    assert [e[IMAGE] for e in ex_a] == [e[IMAGE] for e in ex_b]
    assert np.bincount([e[LABEL] for e in ex_a]).tolist() == [3] * 7
    assert fx.decode(ex_a[0][IMAGE]).shape == (24, 24, 3)
    assert len(fx.read_split(a, "test")) == 14
    assert len({e[IMAGE] for e in ex_a}) == 21  # all different


# --- missing or wrongly laid out manual files -------------------------------------------------

def test_missing_manual_dir_names_it_and_the_download(tmp_path):
    with pytest.raises(ManualFilesError, match=r"(?s)does not exist or is empty.*whdeng\.cn/RAF"):
        fx.build("raf_db", tmp_path / "data", tmp_path / "nowhere")
    assert not (tmp_path / "data/raf_db/1.0.0").exists()


def test_raf_db_wrong_layout_names_the_expected_file(tmp_path):
    fx.make_raf_db(tmp_path / "manual")
    shutil.move(tmp_path / "manual/basic/EmoLabel", tmp_path / "manual/EmoLabels")
    with pytest.raises(ManualFilesError, match=r"(?s)EmoLabel/list_patition_label\.txt.*basic.*"
                                               r"Image/aligned"):
        fx.build("raf_db", tmp_path / "data", tmp_path / "manual")


def test_raf_db_bad_label_line(tmp_path):
    fx.make_raf_db(tmp_path / "manual")
    label_file = tmp_path / "manual/basic/EmoLabel/list_patition_label.txt"
    label_file.write_text(label_file.read_text() + "train_99999.jpg 8\n")
    with pytest.raises(ManualFilesError,
                       match=r"list_patition_label\.txt:29: .*'train_99999\.jpg 8'"):
        fx.build("raf_db", tmp_path / "data", tmp_path / "manual")


def test_affectnet_without_either_release(tmp_path):
    (tmp_path / "manual/train_set").mkdir(parents=True)
    with pytest.raises(ManualFilesError, match=r"Manually_Annotated_file_lists.*val_set"):
        fx.build("affectnet/7", tmp_path / "data", tmp_path / "manual")


def test_class_folder_errors(tmp_path):
    folders = {str(k): k for k in range(7)}
    fx.make_class_folders(tmp_path / "manual", {"train": "train", "test": "test"}, folders, ".jpg",
                          {"train": 2, "test": 2})
    (tmp_path / "manual/test/9").mkdir()
    with pytest.raises(ManualFilesError, match=r"unexpected class folder\(s\) \['9'\] in .*test"):
        fx.build("image_folder/7", tmp_path / "data", tmp_path / "manual")
    (tmp_path / "manual/test/9").rmdir()
    shutil.rmtree(tmp_path / "manual/test/3")
    with pytest.raises(ManualFilesError, match=r"expected one class folder named 3 in .*test"):
        fx.build("image_folder/7", tmp_path / "data", tmp_path / "manual")


def test_ferplus_rows_must_match(tmp_path):
    fx.make_ferplus(tmp_path / "manual", [("Training", "fer0000000.png", [10] + [0] * 9)])
    new = tmp_path / "manual/fer2013new.csv"
    new.write_text(new.read_text().replace("Training", "PublicTest"))
    with pytest.raises(ManualFilesError, match="line 2 of fer2013.csv and fer2013new.csv"):
        fx.build("ferplus", tmp_path / "data", tmp_path / "manual")


# --- corrupt or missing images -------------------------------------------------------------

def _corrupt_raf_db(root):
    expected = fx.make_raf_db(root)
    aligned = root / "basic/Image/aligned"
    truncated = aligned / "train_00003_aligned.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (aligned / "test_0002_aligned.jpg").write_bytes(b"this is not an image")
    (aligned / "train_00005_aligned.jpg").unlink()
    return expected


def test_corrupt_files_fail_the_build_naming_every_one(tmp_path):
    _corrupt_raf_db(tmp_path / "manual")
    with pytest.raises(BadImageFilesError) as missing:  # missing files: before decoding anything
        fx.build("raf_db", tmp_path / "data", tmp_path / "manual")
    assert [name for name, _ in missing.value.bad] == ["Image/aligned/train_00005_aligned.jpg"]
    assert "--skip-corrupt" in str(missing.value)

    fx.save(tmp_path / "manual/basic/Image/aligned/train_00005_aligned.jpg",
            np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(BadImageFilesError) as corrupt:
        fx.build("raf_db", tmp_path / "data", tmp_path / "manual")
    assert sorted(name for name, _ in corrupt.value.bad) == [
        "Image/aligned/test_0002_aligned.jpg", "Image/aligned/train_00003_aligned.jpg"]
    assert "truncated" in str(corrupt.value).lower()
    assert not (tmp_path / "data/raf_db/1.0.0").exists()  # nothing partial is left


def test_skip_corrupt_builds_without_them_and_lists_them(tmp_path):
    expected = _corrupt_raf_db(tmp_path / "manual")
    builder = fx.build("raf_db", tmp_path / "data", tmp_path / "manual", skip_corrupt=True)
    skipped = builder.info.metadata["skipped_files"]
    assert sorted(name for name, _ in skipped["train"]) == [
        "Image/aligned/train_00003_aligned.jpg", "Image/aligned/train_00005_aligned.jpg"]
    assert [name for name, _ in skipped["test"]] == ["Image/aligned/test_0002_aligned.jpg"]
    assert builder.info.splits["train"].num_examples == len(expected["train"]) - 2
    assert builder.info.splits["test"].num_examples == len(expected["test"]) - 1
