"""ONNX export: ONNX Runtime gives the JAX computation's numbers at any batch size.

Quick: each rewrite the export makes before and after jax2onnx (tensors of a symbolic batch
through vmapped convolutions, an edge pad, MA-Net's max pool, nested calls), on small functions
run in ONNX Runtime. Slow: the whole model exported at 224x224 by the CLI against the Flax forward
pass, and `predict --runtime onnx`.
"""

import argparse
import importlib.util
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export
from PIL import Image

from manet_jax import benchmark, export, predict
from manet_jax.bundle import load_bundle
from manet_jax.inference.onnx_export import OnnxExportError, nchw_max_pools, onnx_model, quantized_export
from manet_jax.inference.onnx_runtime import ONNX_FILE, OnnxPredictor
from manet_jax.inference.predictor import OUTPUTS, outputs
from manet_jax.inference.preprocess import eval_view
from manet_jax.inference.quantize import QuantizeError, calibration_images
from manet_jax.inference.stablehlo import METADATA
from manet_jax.models.layers import max_pool_3x3_s2
from train_helpers import make_checkpoint

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the `onnx` extra: pip install -e '.[onnx]'")
onnx = pytest.importorskip("onnx", reason="the `onnx` extra: pip install -e '.[onnx]'")
needs_jax2onnx = pytest.mark.skipif(importlib.util.find_spec("jax2onnx") is None,
                                    reason="pip install --no-deps jax2onnx==0.17.1 (see setup.cfg's onnx extra)")

SIZE = 224
RTOL = 1e-4  # max |ONNX Runtime - Flax| over max |Flax|, per output
BATCH, = jax_export.symbolic_shape("batch")


def max_relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def run_onnx(model, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def vmapped_convolution(x):
    """Four 3x3 convolutions of four channel groups, each with its own kernel, as MA-Net's local
    branches run (jax.vmap): batching writes reshapes with `dimensions`."""
    kernels = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 3, 2, 5)), jnp.float32)
    groups = jnp.moveaxis(x.reshape(*x.shape[:3], 4, 2), 3, 0)
    conv = jax.vmap(lambda g, k: jax.lax.conv_general_dilated(g, k, (1, 1), "SAME",
                                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return [jax.nn.relu(conv(groups, kernels)).sum(0)]


def two_max_pools(x):
    """MA-Net's pool and a lopsided one (window 2x3, strides 1x2, padding 0/1 rows and 2/0 columns)."""
    lopsided = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 3, 1), (1, 1, 2, 1),
                                     ((0, 0), (0, 1), (2, 0), (0, 0)))
    return [max_pool_3x3_s2(x) - 1, lopsided]


SMALL_FUNCTIONS = {
    "vmapped convolution": vmapped_convolution,
    "edge pad": lambda x: [jnp.pad(x, ((0, 0), (1, 2), (0, 1), (0, 0)), constant_values=0.5) * 2],
    "max pools": two_max_pools,
    "nested calls": lambda x: [jax.jit(lambda y: jax.nn.relu(y) + jax.nn.sigmoid(y))(x), jnp.tanh(x).mean((1, 2))],
}


@needs_jax2onnx
@pytest.mark.parametrize("name", SMALL_FUNCTIONS)
def test_a_function_converts_to_the_same_numbers_at_any_batch_size(name):
    fn, spec = SMALL_FUNCTIONS[name], jax.ShapeDtypeStruct((BATCH, 6, 7, 8), jnp.float32)
    model = onnx_model(fn, spec, "x", [f"y{i}" for i in range(len(jax.eval_shape(fn, spec)))])
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch stays symbolic
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 6, 7, 8)).astype(np.float32)
        for got, want in zip(run_onnx(model, x), fn(x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_jax2onnx
def test_max_pools_become_two_dimensional():
    model = onnx_model(two_max_pools, jax.ShapeDtypeStruct((BATCH, 6, 7, 8), jnp.float32), "x", ["y0", "y1"])
    pools = [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
             for node in model.graph.node if node.op_type == "MaxPool"]
    assert sorted(pools, key=lambda pool: pool["kernel_shape"]) == [
        {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 2, 1, 0]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}]
    assert not {"Unsqueeze", "Squeeze"} & {node.op_type for node in model.graph.node}


@needs_jax2onnx
def test_a_nested_computation_the_export_does_not_rewrite_is_refused():
    def cumulative(x):
        return [jax.lax.scan(lambda carry, row: (carry + row, carry + row), jnp.zeros(x.shape[1:]), x)[1]]

    with pytest.raises(OnnxExportError, match="cannot export `scan`: a nested computation"):
        onnx_model(cumulative, jax.ShapeDtypeStruct((4, 3), jnp.float32), "x", ["y"])


def test_a_max_pool_that_cannot_be_mended_is_an_error():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    pool = onnx.helper.make_node("MaxPool", ["x"], ["y"], name="pool3d", kernel_shape=[2, 2, 2])
    model = onnx.helper.make_model(onnx.helper.make_graph([pool], "g", [x], [y]))
    with pytest.raises(OnnxExportError, match="pool3d: a MaxPool that ONNX Runtime cannot run"):
        nchw_max_pools(model)


def test_predict_onnx_refuses_visualize_and_image_size(capsys):
    for option in (["--visualize", "vis"], ["--image-size", "224"]):
        with pytest.raises(SystemExit):
            predict.main(["face.png", "--checkpoint", "export", "--runtime", "onnx", *option])
        assert f"error: {option[0]}" in capsys.readouterr().err


def test_predict_onnx_refuses_a_url(capsys):
    with pytest.raises(SystemExit):
        predict.main(["face.png", "--checkpoint", "gs://bucket/onnx", "--runtime", "onnx"])
    assert "error: --checkpoint gs://bucket/onnx: ONNX Runtime reads an export from a local folder" in (
        capsys.readouterr().err)


def test_predict_onnx_needs_an_onnx_export(tmp_path, capsys):
    (tmp_path / METADATA).write_text(json.dumps({"format": "stablehlo", "class_names": ["a", "b"], "image_size": 64}))
    for checkpoint in (tmp_path, tmp_path / "missing"):
        assert predict.main(["face.png", "--checkpoint", str(checkpoint), "--runtime", "onnx"]) == 2
        assert f"error: --checkpoint {checkpoint}: not an ONNX export" in capsys.readouterr().err
    (tmp_path / ONNX_FILE).write_bytes(b"")
    assert predict.main(["face.png", "--checkpoint", str(tmp_path), "--runtime", "onnx"]) == 2
    assert f"error: --checkpoint {tmp_path}: a stablehlo export, not an ONNX one" in capsys.readouterr().err


@pytest.mark.parametrize("metadata, damage", [
    ('{"format": "onnx", "class_names": ["a", "b"], "image_size": 64', "manet_export.json: damaged (JSONDecodeError"),
    ('{"format": "onnx", "image_size": 64}', "manet_export.json: damaged (KeyError: 'class_names')"),
    ('{"format": "onnx", "class_names": ["a", "b"], "image_size": 64}', "manet.onnx: ONNX Runtime cannot load it")])
def test_a_damaged_onnx_export_is_named(tmp_path, capsys, metadata, damage):
    (tmp_path / METADATA).write_text(metadata)
    (tmp_path / ONNX_FILE).write_bytes(b"not a model")
    assert predict.main(["face.png", "--checkpoint", str(tmp_path), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/{damage}") and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint"), image_size=SIZE)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    pytest.importorskip("jax2onnx", reason="pip install --no-deps jax2onnx==0.17.1 (see setup.cfg's onnx extra)")
    directory = tmp_path_factory.mktemp("export") / "onnx"
    assert export.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(directory)]) == 0
    return directory


@pytest.fixture(scope="module")
def crops():
    """Three uint8 face crops of another size than the model's."""
    return np.random.default_rng(0).integers(0, 256, (3, 150, 130, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def expected(checkpoint, crops):
    """The Flax outputs of the crops as predict preprocesses them."""
    bundle = load_bundle(checkpoint)
    images = np.stack([eval_view(crop, SIZE) for crop in crops])
    run = jax.jit(outputs, static_argnums=(0, 1))
    return images, jax.device_get(run(bundle.spec.module(), bundle.spec.beta, bundle.variables, images))


@pytest.mark.slow  # MA-Net converted and run at 224x224
def test_onnx_runtime_matches_flax_at_any_batch_size(exported, expected):
    metadata = json.loads((exported / METADATA).read_text())
    assert (metadata["format"], metadata["image_size"], metadata["outputs"]) == ("onnx", SIZE, list(OUTPUTS))
    images, want = expected
    for batch_size in (3, 2):  # one run of 3, then runs of 2 and 1: the batch dimension is dynamic
        got = OnnxPredictor(exported, batch_size)(images)
        for key in OUTPUTS:
            assert got[key].shape == want[key].shape
            assert max_relative_difference(got[key], want[key]) <= RTOL, (key, batch_size)


def save_crops(crops: np.ndarray, folder) -> list:
    """The crops as PNG files face0.png, face1.png, ... in `folder`."""
    paths = [folder / f"face{i}.png" for i in range(len(crops))]
    for path, crop in zip(paths, crops):
        Image.fromarray(crop).save(path)
    return paths


@pytest.mark.slow  # the export above
def test_predict_runs_faces_through_onnx_runtime(exported, expected, crops, tmp_path):
    paths = save_crops(crops, tmp_path)
    out = tmp_path / "out.json"
    assert predict.main([*map(str, paths), "--checkpoint", str(exported), "--runtime", "onnx", "--no-detect",
                         "--batch-size", "2", "--output", str(out), "--branch-probabilities"]) == 0
    rows = json.loads(out.read_text())
    _, want = expected
    names = json.loads((exported / METADATA).read_text())["class_names"]
    assert [row["file"] for row in rows] == list(map(str, paths))
    for i, row in enumerate(rows):
        for branch, key in (("fused", "probabilities"), ("local", "probabilities_local"),
                            ("global", "probabilities_global")):
            got = np.array([row["probabilities"][branch][name] for name in names])
            assert max_relative_difference(got, want[key][i]) <= RTOL, (i, branch)


@pytest.mark.slow  # the export above
def test_predict_runs_a_video_through_onnx_runtime(exported, tmp_path):
    """Frames, times and tracks as with XLA (tests/test_predict_video.py's clip)."""
    from test_predict_video import FACE_FRAMES, FIRST_TRACK, FPS, FRAMES, clip_frames, write_clip

    write_clip(tmp_path / "clip.mp4", clip_frames(), "mp4v")
    out = tmp_path / "out.json"
    assert predict.main([str(tmp_path / "clip.mp4"), "--checkpoint", str(exported), "--runtime", "onnx",
                         "--every", "3", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    frames = range(0, FRAMES, 3)
    assert [(row["frame"], row["time_s"], row["track"]) for row in rows] == [
        (i, i / FPS, 0 if i in FIRST_TRACK else 1 if i in FACE_FRAMES else None) for i in frames]
    for row in rows:
        fused = row["probabilities"].get("fused", {})
        assert (row["status"] == "ok") == (row["frame"] in FACE_FRAMES)
        assert not fused or abs(sum(fused.values()) - 1) < 1e-5 and row["label"] == max(fused, key=fused.get)


@pytest.mark.slow  # the export above
def test_the_benchmark_times_onnx_runtime(exported):
    """`manet-benchmark --onnx`'s timing of an export (the benchmark's own export is the CLI's)."""
    args = argparse.Namespace(steps=1, warmup=0, repeats=2, image_size=SIZE, onnx_threads=1)
    result = benchmark.bench_onnx(exported, 12.5, 2, args)
    assert (result.framework, result.variant, result.mode, result.batch, result.compile_s) == (
        "onnxruntime", "float32/1t", "eval", 2, 12.5)
    assert 0 < result.spread[0] <= result.images_per_s <= result.spread[1]
    assert benchmark.format_table([result]).splitlines()[1].startswith("onnxruntime float32/1t eval      2")


@pytest.mark.slow  # the export above
def test_a_damaged_export_file_is_named_by_its_checksum(exported, tmp_path, capsys):
    """64 KB overwritten in the middle of manet.onnx: ONNX Runtime might load it; its checksum tells."""
    damaged = tmp_path / "onnx"
    shutil.copytree(exported, damaged)
    model = bytearray((damaged / ONNX_FILE).read_bytes())
    middle = len(model) // 2
    model[middle:middle + 65536] = bytes(65536)
    (damaged / ONNX_FILE).write_bytes(bytes(model))
    assert predict.main(["face.png", "--checkpoint", str(damaged), "--runtime", "onnx"]) == 2
    assert capsys.readouterr().err == (f"error: {damaged / ONNX_FILE}: damaged (its SHA-256 is not the one "
                                       f"{METADATA} gives); export the model again\n")


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--quantize", "int8"], "--quantize and --calibration: give both or neither"),
    (["--format", "stablehlo", "--quantize", "int8", "--calibration", "x"], "--quantize: ONNX exports only"),
    (["--format", "onnx", "--quantize", "int8", "--calibration", "x", "--calibration-images", "0"],
     "--calibration-images 0: must be at least 1"),
])
def test_int8_options_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", "c", "--output", "o", *argv])
    assert message in capsys.readouterr().err


def test_calibration_images_are_the_models_view(tmp_path):
    """A folder's images (non-images skipped) as predict's --no-detect sees them, the first N."""
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (40 + i, 30, 3), dtype=np.uint8) for i in range(3)]
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    np.testing.assert_array_equal(calibration_images(str(tmp_path), 32, 2),
                                  np.stack([eval_view(crop, 32) for crop in crops[:2]]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizeError, match="--calibration .*empty: holds no image to calibrate on"):
        calibration_images(str(tmp_path / "empty"), 32, 2)


@pytest.mark.slow  # the export above, quantized
def test_an_int8_export_quantizes_every_convolution_and_runs_in_predict(exported, checkpoint, expected, crops,
                                                                         tmp_path, capsys):
    """The float export quantized as `export --quantize int8` does (calibrated on the crops): every
    convolution between QDQ pairs, its weights int8 per output channel; predict runs it and says
    so, its probabilities near float32's."""
    images, want = expected
    int8 = tmp_path / "int8"
    int8.mkdir()
    quantized_export(load_bundle(checkpoint), exported, int8, images)
    model = onnx.load(int8 / ONNX_FILE)
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert len(convs) == sum(node.op_type == "Conv" for node in onnx.load(exported / ONNX_FILE).graph.node)
    for conv in convs:
        activation, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert activation.op_type == weight.op_type == "DequantizeLinear"
        kernel, scale = initializers[weight.input[0]], initializers[weight.input[1]]
        assert kernel.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [kernel.dims[0]]
    paths = save_crops(crops, tmp_path)
    out = tmp_path / "out.json"
    assert predict.main([*map(str, paths), "--checkpoint", str(int8), "--runtime", "onnx", "--no-detect",
                         "--output", str(out)]) == 0
    assert f"{int8}: ONNX Runtime, int8" in capsys.readouterr().err
    names = json.loads((int8 / METADATA).read_text())["class_names"]
    got = np.array([[row["probabilities"]["fused"][name] for name in names] for row in json.loads(out.read_text())])
    print(f"int8 against float32: {max_relative_difference(got, want['probabilities']):.4f}")
    assert max_relative_difference(got, want["probabilities"]) <= 0.1  # a random model: 0.043 measured
