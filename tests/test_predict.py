"""predict: the detector on real photos shipped with scikit-image, the pipeline against the evaluator,
odd inputs, the command line with its JSON/CSV output and the visualisations.

A randomly initialised 7-class model at 64x64 keeps this fast; accuracy is not the point.
"""

import csv
import dataclasses
import io
import itertools
import json
import os
import re
import signal
import time
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

from manet_jax import predict
from manet_jax.bundle import ModelSpec, default_class_names, load_bundle, save_bundle
from manet_jax.data.prepare import prepare
from manet_jax.inference.boxes import BoxesFile
from manet_jax.inference.detectors import get_detector
from manet_jax.inference.faces import Box, detect_faces
from manet_jax.inference.images import MAX_SIDE, find_images, load_image
from manet_jax.inference.photos import predict_paths
from manet_jax.inference.predictor import Predictor
from manet_jax.inference.records import ERROR, NO_FACE, OK
from manet_jax.inference.tracking import iou
from manet_jax.inference.visualize import HEIGHT, WIDTH
from manet_jax.models import MANet, init_variables
from manet_jax.training.checkpoints import Checkpoints
from manet_jax.training.config import load_config
from manet_jax.training.run import evaluate_checkpoint
from manet_jax.training.steps import TrainState
from train_helpers import REPO, tmpfs

SIZE = 64
FAST_RNG = "unsafe_rbg"  # compiles the random init three times faster than threefry on CPU
BATCH = 4
ASTRONAUT_FACE = Box(175, 60, 100, 105)  # by eye: hairline to chin, ear to ear
LARGE_SCALE, LARGE_OFFSET = 16, 1000  # the large image: the astronaut scaled 16x, shifted right
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    variables = init_variables(MANet(7), jax.random.key(0, impl=FAST_RNG))
    return save_bundle(tmp_path_factory.mktemp("checkpoint"), variables, ModelSpec(default_class_names(7)))


@pytest.fixture(scope="module")
def bundle(checkpoint):
    return load_bundle(checkpoint).resized(SIZE, "--image-size")


@pytest.fixture(scope="module")
def predictor(bundle):
    return Predictor(bundle, BATCH, maps=True)  # the CLI's with --visualize: compiled once for both


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of real and odd inputs, each derived from scikit-image's astronaut photo or others."""
    d = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()
    grey = np.asarray(Image.fromarray(astronaut).convert("L"))
    Image.fromarray(astronaut).save(d / "astronaut.png")
    Image.fromarray(grey).save(d / "grey.png")
    Image.fromarray(np.dstack([astronaut, np.full(grey.shape, 128, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(astronaut).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    Image.fromarray(grey.astype(np.uint16) * 257).save(d / "grey16.png")  # 16-bit greyscale
    cv2.imwrite(str(d / "rgb16.png"), astronaut[..., ::-1].astype(np.uint16) * 257)  # 16-bit RGB
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display": stored turned anticlockwise
    Image.fromarray(np.rot90(astronaut).copy()).save(d / "exif_rotated.png", exif=exif)
    Image.fromarray(np.hstack([astronaut, astronaut])).save(d / "two_faces.png")
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    big = np.full((512 * LARGE_SCALE, 512 * LARGE_SCALE + 2 * LARGE_OFFSET, 3), 90, np.uint8)  # 96 MP
    big[:, LARGE_OFFSET:-LARGE_OFFSET] = cv2.resize(astronaut, None, fx=LARGE_SCALE, fy=LARGE_SCALE,
                                                    interpolation=cv2.INTER_NEAREST)
    Image.fromarray(big).save(d / "large.jpg", quality=80)
    del big
    (d / "notes.jpg").write_text("not an image\n")
    buffer = io.BytesIO()
    Image.fromarray(astronaut).save(buffer, "JPEG")
    (d / "truncated.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    return d


@pytest.fixture(scope="module")
def records(photos, predictor):
    """The folder's records by file name (face records as a list)."""
    by_name = {}
    for record in predict_paths([str(photos)], predictor, detect_faces=get_detector("cascade")):
        by_name.setdefault(record.file.rsplit("/", 1)[-1], []).append(record)
    return by_name


def assert_same_prediction(a, b, atol=1e-6):
    assert a.box == b.box and a.label == b.label
    for branch in a.probabilities:
        np.testing.assert_allclose(list(a.probabilities[branch].values()), list(b.probabilities[branch].values()),
                                   atol=atol)


def test_detector_finds_the_astronauts_face():
    faces = detect_faces(data.astronaut())
    assert len(faces) == 1 and iou(faces[0], ASTRONAUT_FACE) > 0.7


def test_detector_on_lfw_crops():
    """The 25x25 LFW crops, upscaled 4x and padded: nearly all faces found, nearly no non-faces."""
    crops = (data.lfw_subset() * 255).astype(np.uint8)  # 100 faces, then 100 non-faces

    def count(crop):
        canvas = cv2.copyMakeBorder(cv2.resize(crop, (100, 100)), 50, 50, 50, 50, cv2.BORDER_REPLICATE)
        return len(detect_faces(cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB)))

    counts = np.array([count(crop) for crop in crops])
    assert (counts[:100] == 1).mean() >= 0.9
    assert (counts[100:] > 0).mean() <= 0.05


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
def test_predictions_match_the_evaluator(records, photos, checkpoint, predictor, tmp_path):
    """A detected face (class 1) and aligned LFW crops (--no-detect; the other classes), saved as
    PNGs in an image-folder dataset and evaluated by the evaluator on that config: its loss and
    confusion matrices are those of predict's probabilities."""
    astronaut, = records["astronaut.png"]
    assert astronaut.status == OK and iou(astronaut.box, ASTRONAUT_FACE) > 0.5
    faces = {1: (astronaut, astronaut.box.crop(data.astronaut()))}
    lfw = (data.lfw_subset()[:6] * 255).astype(np.uint8)
    for label, crop in zip((0, 2, 3, 4, 5, 6), lfw):
        Image.fromarray(crop).save(tmp_path / "lfw.png")
        record, = predict_paths([str(tmp_path / "lfw.png")], predictor, detect_faces=None)
        assert record.box == Box(0, 0, 25, 25)
        faces[label] = (record, crop)
    for split, (label, (_, pixels)) in itertools.product(("train", "test"), faces.items()):
        (tmp_path / "faces" / split / str(label)).mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "faces" / split / str(label) / "face.png")
    prepare("image_folder/7", str(tmp_path / "faces"), str(tmp_path / "data"))
    config = load_config(str(REPO / "configs/demo.py"), ["dataset=image_folder/7", f"data_dir={tmp_path / 'data'}",
                                                         f"image_size={SIZE}", f"batch_size={BATCH}"])
    results = evaluate_checkpoint(config, str(checkpoint), output_dir=str(tmp_path / "report"))["image_folder/7/test"]
    beta, names = predictor.spec.beta, predictor.spec.class_names
    losses = [-beta * np.log(record.probabilities["local"][names[label]])
              - (1 - beta) * np.log(record.probabilities["global"][names[label]])
              for label, (record, _) in faces.items()]
    np.testing.assert_allclose(results["loss"], np.mean(losses), rtol=1e-5)
    for head in ("fused", "local", "global"):
        confusion = np.zeros((7, 7), int)
        for label, (record, _) in faces.items():
            probabilities = record.probabilities[head]
            confusion[label, names.index(max(probabilities, key=probabilities.get))] += 1
        assert results[head]["confusion_matrix"] == confusion.tolist(), head


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
def test_greyscale_and_16_bit_greyscale(records, photos):
    np.testing.assert_array_equal(load_image(photos / "grey16.png").pixels, load_image(photos / "grey.png").pixels)
    (grey,), (grey16,) = records["grey.png"], records["grey16.png"]
    assert grey.status == OK
    assert_same_prediction(grey16, grey)


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
@pytest.mark.parametrize("name", ["rgba.png", "rgb16.png", "exif_rotated.png"])
def test_same_pixels_same_prediction(records, name):
    """RGBA (alpha dropped), 16-bit RGB (high byte kept) and EXIF-rotated copies of the astronaut."""
    (record,), (reference,) = records[name], records["astronaut.png"]
    assert_same_prediction(record, reference)


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
def test_cmyk_jpeg(records):
    record, = records["cmyk.jpg"]
    assert record.status == OK and iou(record.box, records["astronaut.png"][0].box) > 0.8


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
def test_several_faces_and_none(records):
    left, right = records["two_faces.png"]
    reference = records["astronaut.png"][0].box
    assert (left.face, right.face) == (0, 1)
    assert iou(left.box, reference) > 0.8 and iou(right.box, dataclasses.replace(reference, x=reference.x + 512)) > 0.8
    (coffee,) = records["coffee.png"]
    assert coffee.status == NO_FACE and coffee.box is None


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
def test_very_large_image(records, photos):
    """96 megapixels (past Pillow's bomb warning): decoded downscaled, box in original pixels."""
    assert max(load_image(photos / "large.jpg").pixels.shape) == MAX_SIDE
    record, = records["large.jpg"]
    reference = records["astronaut.png"][0].box
    expected = Box(reference.x * LARGE_SCALE + LARGE_OFFSET, *(v * LARGE_SCALE for v in
                                                                (reference.y, reference.width, reference.height)))
    assert iou(record.box, expected) > 0.8


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
@pytest.mark.parametrize("name, message", [("notes.jpg", "not an image file"), ("truncated.jpg", "truncated")])
def test_bad_files_are_reported(records, photos, name, message):
    record, = records[name]
    assert record.status == ERROR and str(photos / name) in record.message and message in record.message


@pytest.mark.slow  # MA-Net's initialiser and the predictor compiled (module fixtures)
def test_boxes_file_crops_exactly_its_boxes(photos, predictor, tmp_path):
    """--boxes: each record carries a box of the file (matched by path, else by name; clipped to
    the image), predicted as that crop alone is; an image without boxes has no face."""
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([
        {"file": str(photos / "astronaut.png"), "x": 175, "y": 60, "width": 100, "height": 105},
        {"file": str(photos / "astronaut.png"), "x": 480, "y": 500, "width": 100, "height": 100},  # clipped
        {"file": "elsewhere/two_faces.png", "x": 700, "y": 50, "width": 120, "height": 110}]))
    paths = [str(photos / name) for name in ("astronaut.png", "two_faces.png", "coffee.png")]
    records = predict_paths(paths, predictor, detect_faces=None, boxes=BoxesFile(boxes))
    assert [(Path(r.file).name, r.status, r.box) for r in records] == [
        ("astronaut.png", OK, Box(175, 60, 100, 105)), ("astronaut.png", OK, Box(480, 500, 32, 12)),
        ("two_faces.png", OK, Box(700, 50, 120, 110)), ("coffee.png", NO_FACE, None)]
    Image.fromarray(data.astronaut()[60:165, 175:275]).save(tmp_path / "crop.png")
    alone, = predict_paths([str(tmp_path / "crop.png")], predictor, detect_faces=None)
    assert alone.box == Box(0, 0, 100, 105) and alone.label == records[0].label
    np.testing.assert_allclose(list(alone.probabilities["fused"].values()),
                               list(records[0].probabilities["fused"].values()), atol=1e-6)


def test_each_real_file_is_found_once_and_looping_links_are_reported(tmp_path):
    """A link loop made a `**` glob decode one file many times; looping file links were dropped silently."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for name in ["a.png", "b.jpg", "sub/c.png"]:
        (tree / name).write_bytes(b"")
    (tree / "sub" / "up").symlink_to("..")  # a folder loop
    (tree / "sub_alias").symlink_to("sub")  # a second name of a folder, searched after it
    (tree / "b_again.jpg").symlink_to("b.jpg")
    (tree / "self.png").symlink_to("self.png")  # a file link that loops
    (tree / "dangling.png").symlink_to("nowhere.png")
    files, skipped = find_images([str(tree), str(tree / "**" / "*.*"), str(tree / "a.png")])
    assert files == [tree / "a.png", tree / "b.jpg", tree / "sub" / "c.png"]
    assert skipped == [(str(tree / "sub" / "up"), f"a symbolic link loop: it leads back to {tree}"),
                       (str(tree / "dangling.png"), "a symbolic link that loops or leads nowhere"),
                       (str(tree / "self.png"), "a symbolic link that loops or leads nowhere")]  # each once


@pytest.mark.slow  # MA-Net's initialiser compiled (module fixture)
def test_trainer_workdir(tmp_path, bundle):
    """A workdir's checkpoints hold the model's spec: its size, beta, dtype and classes."""
    state = TrainState(step=np.int32(3), params=bundle.variables["params"], batch_stats=bundle.variables["batch_stats"],
                       opt_state={})
    spec = ModelSpec([f"c{i}" for i in range(7)], image_size=96, beta=0.5, dtype="bfloat16")
    checkpoints = Checkpoints(tmp_path / "run/checkpoints")
    checkpoints.save(3, state, spec, {"summary": None})
    checkpoints.wait()
    checkpoints.close()
    loaded = load_bundle(tmp_path / "run")
    assert loaded.spec == spec and loaded.step == 3
    np.testing.assert_array_equal(loaded.variables["params"]["fc_2"]["kernel"],
                                  bundle.variables["params"]["fc_2"]["kernel"])
    assert loaded.resized(SIZE, "--image-size").spec.image_size == SIZE


@pytest.mark.slow  # MA-Net's initialiser compiled (module fixture)
def test_cli(checkpoint, photos, tmp_path, capsys):
    """Files, a glob and a missing path; table, JSON with branch probabilities, CSV, visualisations."""
    common = ["--checkpoint", str(checkpoint), "--image-size", str(SIZE), "--batch-size", str(BATCH)]
    out_json, vis = tmp_path / "out.json", tmp_path / "vis"
    paths = [str(photos / "two_faces.png"), str(photos / "co*.png"), str(photos / "notes.jpg"), "missing.png"]
    assert predict.main(paths + common + ["--output", str(out_json), "--branch-probabilities",
                                          "--visualize", str(vis)]) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].split()[:6] == ["file", "face", "box", "(x,y,w,h)", "label", "Neutr"]
    summary = captured.err.splitlines()[-1]
    assert summary.startswith("4 inputs: 2 face(s) in 1 image(s), 1 without a face, 2 skipped; ")
    assert summary.endswith(" faces/s") and float(summary.split()[-2]) > 0
    assert "no face" in table[-2] and "error: " in table[-1] and len(table) == 6

    rows = json.loads(out_json.read_text())
    assert [(r["file"].rsplit("/", 1)[-1], r["status"], r["face"]) for r in rows] == [
        ("missing.png", ERROR, None), ("two_faces.png", OK, 0), ("two_faces.png", OK, 1),
        ("coffee.png", NO_FACE, None), ("notes.jpg", ERROR, None)]
    assert set(rows[1]["probabilities"]) == {"fused", "local", "global"}
    assert rows[1]["label"] == max(rows[1]["probabilities"]["fused"], key=rows[1]["probabilities"]["fused"].get)
    assert abs(sum(rows[1]["probabilities"]["fused"].values()) - 1) < 1e-5
    assert set(rows[1]["box"]) == {"x", "y", "width", "height"}

    pngs = sorted(vis.iterdir())
    assert [p.name for p in pngs] == ["two_faces_face0.png", "two_faces_face1.png"]
    assert rows[1]["visualization"] == str(pngs[0])
    for png in pngs:
        with Image.open(png) as image:
            assert (image.format, image.size) == ("PNG", (WIDTH, HEIGHT))
            image.verify()

    out_csv = tmp_path / "out.csv"
    assert predict.main([str(photos / "astronaut.png")] + common + ["--output", str(out_csv),
                                                                  "--visualize", str(tmp_path / "vis2")]) == 0
    row, = csv.DictReader(out_csv.open())
    assert row["status"] == OK and float(row["fused_Happiness"]) > 0 and "local_Happiness" not in row


@pytest.mark.slow  # MA-Net's initialiser compiled (module fixture)
def test_sigterm_between_images_writes_nothing(checkpoint, photos, tmp_path, monkeypatch, capsys):
    """A real SIGTERM while the second image loads (the tool's own handlers): predict ends with its one
    line and 143 before the third, and neither --output nor --visualize, nor a temporary, is left."""
    from manet_jax.inference import photos as photos_module
    loaded, load = [], photos_module.load_image

    def signalled_at_the_second(path):
        loaded.append(path)
        if len(loaded) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler records it; the next image is not read
        return load(path)

    monkeypatch.setattr(photos_module, "load_image", signalled_at_the_second)
    out = tmp_path / "rows.json"
    names = ["astronaut.png", "two_faces.png", "coffee.png"]
    assert predict.main([str(photos / name) for name in names] + [
        "--checkpoint", str(checkpoint), "--image-size", str(SIZE), "--batch-size", str(BATCH),
        "--output", str(out), "--visualize", str(tmp_path / "vis")]) == 143
    assert capsys.readouterr().err.endswith("stopped by SIGTERM\n")
    assert len(loaded) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # MA-Net's initialiser compiled (module fixture)
def test_cli_fails_only_when_nothing_was_processed(checkpoint, photos, capsys):
    args = ["--checkpoint", str(checkpoint), "--image-size", str(SIZE)]
    assert predict.main([str(photos / "notes.jpg"), str(photos / "truncated.jpg"), "missing.png"] + args) == 1
    assert "3 inputs: 0 face(s) in 0 image(s), 0 without a face, 3 skipped; 0.0 faces/s" in capsys.readouterr().err


def exit_status(argv: list[str]) -> int:
    """predict's exit status, whether argparse exits or predict returns it."""
    try:
        return predict.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.slow  # MA-Net's initialiser compiled (module fixture)
@pytest.mark.parametrize("option, message", [(["--output", "out.txt"], "--output out.txt"),
                                             (["--image-size", "100"], "error: --image-size=100: MA-Net needs"),
                                             (["--margin", "-0.1"], "--margin -0.1")])
def test_cli_rejects_bad_options(checkpoint, capsys, option, message):
    assert exit_status(["x.png", "--checkpoint", str(checkpoint)] + option) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_a_non_checkpoint(tmp_path, capsys):
    assert exit_status(["x.png", "--checkpoint", str(tmp_path)]) == 2
    assert f"error: {tmp_path}: not a manet-jax model" in capsys.readouterr().err
    assert exit_status(["x.png", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert f"error: {tmp_path / 'nowhere'}: does not exist" in capsys.readouterr().err


def test_outputs_that_cannot_be_written_are_named_before_the_model_loads(tmp_path, capsys):
    """The model does not exist: each output is refused first, in one line, and nothing is written."""
    (tmp_path / "vis").mkdir()
    (tmp_path / "vis" / "keep.txt").write_text("keep")  # not an earlier --visualize, which holds PNGs only
    args = ["face.png", "--checkpoint", str(tmp_path / "no_model")]
    with tmpfs(tmp_path / "ro", "ro,size=1m") as read_only, tmpfs(tmp_path / "full", "size=32k") as full:
        cases = [("--output", read_only / "out.json", rf"cannot be written: {read_only} is read-only \(a read-only "
                                                      r"file system or no write permission\)"),
                 ("--visualize", tmp_path / "vis", "exists and is not empty; choose a new directory"),
                 ("--visualize", full / "vis", r"no space left on device \(the output needs 1 MB; 0 MB free\)")]
        for option, path, problem in cases:
            assert predict.main([*args, option, str(path)]) == 2
            err = capsys.readouterr().err
            assert re.fullmatch(rf"error: {option} {re.escape(str(path))}: {problem}\n", err), err
        assert list(full.iterdir()) == []
    assert [p.name for p in (tmp_path / "vis").iterdir()] == ["keep.txt"]
