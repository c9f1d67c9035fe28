"""export: the StableHLO and SavedModel exports give the JAX model's outputs, at any batch size.

A randomly initialised 7-class model at 96x96 keeps this fast: no map is smaller than a kernel
(their matrix-product form takes the TFLite converter minutes).
"""

import json
import re

import jax
import numpy as np
import pytest
import tensorflow as tf

from manet_jax import export
from manet_jax.bundle import ModelSpec, default_class_names, load_bundle, save_bundle
from manet_jax.inference.predictor import OUTPUTS, outputs
from manet_jax.inference.stablehlo import METADATA, STABLEHLO_FILE
from manet_jax.models import MANet, init_variables
from train_helpers import tmpfs

pytestmark = pytest.mark.slow  # MA-Net's initialiser compiled (module fixture), exports at 96x96: minutes

SIZE = 96
FAST_RNG = "unsafe_rbg"  # compiles the random init three times faster than threefry on CPU
ATOL = 2e-5  # logits of a random model are O(1); XLA may fuse differently in each runtime


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    variables = init_variables(MANet(7), jax.random.key(1, impl=FAST_RNG))
    return save_bundle(tmp_path_factory.mktemp("checkpoint"), variables, ModelSpec(default_class_names(7)))


@pytest.fixture(scope="module")
def images():
    """Three uint8 images and the same as the model's float input."""
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    return pixels, pixels.astype(np.float32) * np.float32(1 / 255)


@pytest.fixture(scope="module")
def expected(checkpoint, images):
    bundle = load_bundle(checkpoint)
    return jax.device_get(jax.jit(outputs, static_argnums=(0, 1))(bundle.spec.module(), bundle.spec.beta,
                                                                   bundle.variables, images[1]))


def run_export(checkpoint, fmt, directory, *extra):
    assert export.main(["--checkpoint", str(checkpoint), "--format", fmt, "--output", str(directory),
                        "--image-size", str(SIZE), *extra]) == 0
    metadata = json.loads((directory / METADATA).read_text())
    assert metadata["format"] == fmt and metadata["image_size"] == SIZE and len(metadata["class_names"]) == 7
    return directory


def assert_matches(result, expected, rows=slice(None)):
    assert set(result) == set(OUTPUTS)
    for key in OUTPUTS:
        np.testing.assert_allclose(np.asarray(result[key]), expected[key][rows], atol=ATOL, err_msg=key)


def test_stablehlo(checkpoint, tmp_path, images, expected):
    """Deserialized without the model code, with a symbolic batch size (exercised by the SavedModel)."""
    directory = run_export(checkpoint, "stablehlo", tmp_path / "stablehlo")
    exported = jax.export.deserialize((directory / STABLEHLO_FILE).read_bytes())
    assert not isinstance(exported.in_avals[0].shape[0], int)  # symbolic batch
    assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
    assert_matches(exported.call(images[1]), expected)


@pytest.fixture(scope="module")
def savedmodel(checkpoint, tmp_path_factory):
    return run_export(checkpoint, "savedmodel", tmp_path_factory.mktemp("export") / "savedmodel", "--platforms", "cpu")


def test_savedmodel(savedmodel, images, expected):
    """`serving_default` takes uint8, `serving_float` floats in [0, 1]; any batch size."""
    loaded = tf.saved_model.load(str(savedmodel))
    assert_matches(loaded.signatures["serving_default"](images=tf.constant(images[0])), expected)
    assert_matches(loaded.signatures["serving_float"](images=tf.constant(images[1][:2])), expected, slice(0, 2))


def test_savedmodel_converts_to_tflite(savedmodel, images, expected):
    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=["serving_default"])
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner("serving_default")
    assert_matches(runner(images=images[0]), expected)


def exit_status(main, argv: list[str]) -> int:
    """A tool's exit status, whether argparse exits or the tool returns it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "--format"),
    (["--format", "stablehlo", "--platforms", "cpu,metal"], "--platforms cpu,metal"),
    (["--format", "stablehlo", "--image-size", "72"], "error: --image-size=72: MA-Net needs an input size"),
])
def test_bad_options(checkpoint, tmp_path, capsys, args, message):
    assert exit_status(export.main, ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err


def test_refuses_a_non_empty_output_in_one_line(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("")
    assert exit_status(export.main, ["--checkpoint", str(tmp_path / "model"), "--format", "savedmodel",
                                     "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: --output {tmp_path}: exists and is not empty; choose a new directory\n"


def test_an_output_that_cannot_be_written_is_named_in_one_line_and_nothing_is_left(checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("notes")
    cases = {tmp_path / "file": "is a file, not a directory",
             tmp_path / "file" / "export": f"lies beneath the file {tmp_path / 'file'}, not in a directory"}
    with tmpfs(tmp_path / "full", "size=20m") as full, tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        cases |= {full / "export": r"no space left on device \(the output needs \d+ MB; 21 MB free\)",
                  read_only / "export": rf"cannot be written: {read_only} is read-only \(a read-only file system or "
                                        r"no write permission\)"}
        for output, problem in cases.items():
            assert exit_status(export.main, ["--checkpoint", str(checkpoint), "--format", "stablehlo",
                                             "--output", str(output)]) == 2
            err = capsys.readouterr().err
            assert re.fullmatch(rf"error: --output {re.escape(str(output))}: {problem}\n", err), err
        assert list(full.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full", "ro"]
