"""PyTorch <-> Flax conversion: exact round trips, official checkpoint formats, errors, CLI."""

import pickle
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import golden
from manet_jax.bundle import ModelSpec, default_class_names, load_bundle, save_bundle
from manet_jax.convert import (CheckpointFileError, StateDictMismatchError, flax_to_torch, import_resnet18,
                               import_state_dict, load_state_dict_file, save_state_dict_file, torch_to_flax)
from manet_jax.convert.__main__ import main as convert_main
from manet_jax.models import MANet, init_variables
from train_helpers import tmpfs

HEADS = ("fc_1.weight", "fc_1.bias", "fc_2.weight", "fc_2.bias")


@pytest.fixture(scope="module")
def state_dict():
    return golden.state_dict(0, 7)


@pytest.fixture(scope="module")
def variables(state_dict):
    return torch_to_flax(state_dict)


def tree_equal(a, b) -> bool:
    same = jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y) and np.dtype(x.dtype) == np.dtype(y.dtype), a, b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(jax.tree_util.tree_leaves(same))


def assert_same_state_dict(a, b, ordered=True):
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_round_trip_is_bitwise_in_reference_order(state_dict, variables):
    back = flax_to_torch(variables)
    assert list(back) == [key for key, _, _ in golden.key_table()]
    assert_same_state_dict(back, state_dict)
    assert tree_equal(torch_to_flax(back), variables)


def test_layouts_and_names(state_dict, variables):
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  state_dict["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["params"]["fc_1"]["kernel"], state_dict["fc_1.weight"].T)
    branches = variables["params"]["local_branches"]["layer3_1"]["0"]["cbam"]["ChannelGate"]["mlp"]["1"]["kernel"]
    for k in range(4):  # quadrant pk is index k-1 of the stacked local branches
        np.testing.assert_array_equal(branches[k], state_dict[f"layer3_1_p{k + 1}.0.cbam.ChannelGate.mlp.1.weight"].T)
    stats = variables["batch_stats"]["local_branches"]["layer4_1"]["1"]["cbam"]["SpatialGate"]["spatial"]["bn"]
    np.testing.assert_array_equal(stats["mean"][3], state_dict["layer4_1_p4.1.cbam.SpatialGate.spatial.bn.running_mean"])
    bn = variables["batch_stats"]["layer4_2"]["0"]["bn2_2_3"]
    np.testing.assert_array_equal(bn["var"], state_dict["layer4_2.0.bn2_2_3.running_var"])


def test_torch_tensors_module_prefix_and_pth_tar_wrapper(state_dict, variables):
    torch = pytest.importorskip("torch")
    wrapped = {"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()}, "epoch": 30}
    assert tree_equal(torch_to_flax(wrapped), variables)


@pytest.mark.slow  # compiles MA-Net's initialiser (about 40 s on 2 cores)
def test_msceleb_heads_are_replaced_and_reported(state_dict):
    msceleb = dict(state_dict)
    rng = np.random.default_rng(0)
    msceleb.update({"fc_1.weight": rng.random((12666, 512), np.float32), "fc_1.bias": np.zeros(12666, np.float32),
                    "fc_2.weight": rng.random((12666, 512), np.float32), "fc_2.bias": np.zeros(12666, np.float32)})
    conversion = import_state_dict(msceleb, num_classes=7, rng=jax.random.key(3))
    assert conversion.dropped == list(HEADS) and conversion.initialised == list(HEADS)
    assert len(conversion.loaded) == len(state_dict) - 4
    fresh = init_variables(MANet(7), jax.random.key(3))
    np.testing.assert_array_equal(conversion.variables["params"]["fc_2"]["kernel"], fresh["params"]["fc_2"]["kernel"])
    back = flax_to_torch(conversion.variables)
    for key in state_dict:
        if key not in HEADS:
            np.testing.assert_array_equal(back[key], state_dict[key])
    assert "initialised fresh  fc_1" in conversion.summary()
    # Without num_classes the pre-training model itself is converted (63,535,348 parameters).
    full = torch_to_flax(msceleb)
    assert sum(a.size for a in jax.tree_util.tree_leaves(full["params"])) == 63_535_348


def test_mismatches_are_listed_together(state_dict):
    broken = dict(state_dict)
    del broken["layer1.0.conv1.weight"]
    broken["layer2.0.bn1.weight"] = np.ones(7, np.float32)
    broken["layer9.weight"] = np.ones(3, np.float32)
    with pytest.raises(StateDictMismatchError) as e:
        torch_to_flax(broken)
    message = str(e.value)
    assert "1 missing" in message and "layer1.0.conv1.weight" in message
    assert "1 wrong shape" in message and "layer2.0.bn1.weight: checkpoint (7,), expected (128,)" in message
    assert "1 unexpected" in message and "layer9.weight" in message
    with pytest.raises(StateDictMismatchError, match="not an MA-Net state_dict"):
        torch_to_flax({"conv.weight": np.ones(3)})


def resnet18_state_dict(state_dict):
    """A torchvision-named ResNet-18 state_dict with distinct values per tensor."""
    rng = np.random.default_rng(1)
    out = {}
    for key, value in state_dict.items():
        top = key.split(".")[0]
        name = {"layer3_1_p1": "layer3", "layer4_1_p1": "layer4"}.get(top, top)
        if name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4") and ".cbam." not in key:
            out[name + key[len(top):]] = rng.random(value.shape).astype(value.dtype)
    out["fc.weight"] = rng.random((1000, 512), np.float32)
    out["fc.bias"] = rng.random(1000, np.float32)
    return out


@pytest.mark.slow  # compiles MA-Net's initialiser (about 40 s on 2 cores)
def test_resnet18_import(state_dict):
    resnet = resnet18_state_dict(state_dict)
    conversion = import_resnet18(resnet, num_classes=7, rng=jax.random.key(5))
    out = flax_to_torch(conversion.variables)
    fresh = flax_to_torch(init_variables(MANet(7), jax.random.key(5)))
    for k in (1, 2, 3, 4):
        for j in (3, 4):
            for leaf in ("0.conv1.weight", "1.bn2.running_var", "0.downsample.0.weight"):
                np.testing.assert_array_equal(out[f"layer{j}_1_p{k}.{leaf}"], resnet[f"layer{j}.{leaf}"])
            np.testing.assert_array_equal(out[f"layer{j}_1_p{k}.0.cbam.ChannelGate.mlp.1.weight"],
                                          fresh[f"layer{j}_1_p{k}.0.cbam.ChannelGate.mlp.1.weight"])
    for leaf in ("0.conv1.weight", "1.conv1.weight", "0.bn1.bias", "0.downsample.1.weight"):
        np.testing.assert_array_equal(out[f"layer3_2.{leaf}"], resnet[f"layer3.{leaf}"])
    np.testing.assert_array_equal(out["layer4_2.0.conv1_2_1.weight"], fresh["layer4_2.0.conv1_2_1.weight"])
    np.testing.assert_array_equal(out["layer2.1.conv2.weight"], resnet["layer2.1.conv2.weight"])
    assert conversion.dropped == ["fc.weight", "fc.bias"]
    assert all(".cbam." in k or "_2_" in k or k.startswith("fc_") for k in conversion.initialised)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pth"])
def test_weight_files_round_trip(tmp_path, state_dict, suffix):
    if suffix == ".pth":
        pytest.importorskip("torch")
    path = save_state_dict_file(state_dict, tmp_path / f"weights{suffix}")
    assert_same_state_dict(load_state_dict_file(path), state_dict, ordered=suffix != ".safetensors")


def test_official_pth_tar_format(tmp_path, state_dict):
    torch = pytest.importorskip("torch")
    path = tmp_path / "Pretrained_on_MSCeleb.pth.tar"
    torch.save({"epoch": 40, "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()},
                "best_acc": torch.tensor(88.4)}, path)
    assert_same_state_dict(load_state_dict_file(path), state_dict)


class NotATensor:
    """Stands for the RecorderMeter object a resume checkpoint pickles."""


def test_bad_files_are_named(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointFileError, match="notes.pth: not a readable PyTorch checkpoint"):
        load_state_dict_file(text)
    pickled = tmp_path / "resume.pth.tar"
    torch.save({"state_dict": {}, "recorder": NotATensor()}, pickled)
    with pytest.raises(CheckpointFileError, match="refused: it pickles test_convert.NotATensor, not only tensors"):
        load_state_dict_file(pickled)
    with pytest.raises(CheckpointFileError, match="no such file"):
        load_state_dict_file(tmp_path / "missing.pth")
    with pytest.raises(CheckpointFileError, match="unknown weight file type '.h5'"):
        (tmp_path / "w.h5").write_bytes(b"x")
        load_state_dict_file(tmp_path / "w.h5")
    bad_npz = tmp_path / "w.npz"
    bad_npz.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointFileError, match="w.npz: not a readable .npz"):
        load_state_dict_file(bad_npz)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(CheckpointFileError, match="needs torch, which is not installed"):
        load_state_dict_file(pickled)


@pytest.mark.parametrize("kind", ["resume file", "plain pickle"])
def test_a_pickle_is_refused_in_our_words_alone(tmp_path, capsys, kind):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pth"
    if kind == "resume file":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "recorder": NotATensor()}, path)
        what = "test_convert.NotATensor, not only tensors"
    else:  # torch's safe loader warns about the pickle protocol, then refuses it
        path.write_bytes(pickle.dumps({"w": torch.zeros(2)}, protocol=4))
        what = "more than tensors (Unsupported operand 149)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert convert_main(["to-flax", str(path), str(tmp_path / "out")]) == 2
    assert [str(w.message) for w in caught] == []
    assert capsys.readouterr().err == (
        f"error: {path}: refused: it pickles {what}, and manet-jax loads tensors only (unpickling anything else can "
        "run code). Where you trust the file, load it with PyTorch, save the tensors alone with "
        "torch.save(checkpoint['state_dict'], 'weights.pth') and convert weights.pth\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # full-size weights converted both ways, loaded into the PyTorch reference: about 6 s
def test_cli_both_directions_loadable_by_reference_model(tmp_path, state_dict, capsys):
    torch = pytest.importorskip("torch")
    from reference.manet_torch import MANet as TorchMANet

    source = tmp_path / "in.pth.tar"
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()}}, source)
    assert convert_main(["to-flax", str(source), str(tmp_path / "ckpt"), "--multiscale-wiring", "2021"]) == 0
    assert "692 tensors loaded, 0 initialised fresh" in capsys.readouterr().out
    spec = load_bundle(tmp_path / "ckpt").spec
    assert (spec.num_classes, spec.image_size, spec.multiscale_wiring) == (7, 224, "2021")
    assert spec.class_names[0] == "Neutral" and str(source) in spec.source
    assert convert_main(["to-torch", str(tmp_path / "ckpt"), str(tmp_path / "out.pth")]) == 0
    assert "multi-scale wiring 2021" in capsys.readouterr().out
    exported = torch.load(tmp_path / "out.pth", weights_only=True)
    assert_same_state_dict({k: v.numpy() for k, v in exported.items()}, state_dict)
    TorchMANet(num_classes=7).load_state_dict(exported, strict=True)


@pytest.mark.slow  # a process
def test_cli_errors_exit_2_with_the_file_named(tmp_path):
    result = subprocess.run([sys.executable, "-m", "manet_jax.convert", "to-flax", str(tmp_path / "nope.pth"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"error: {tmp_path / 'nope.pth'}: no such file" in result.stderr


@pytest.fixture(scope="module")
def converted(tmp_path_factory, state_dict, variables):
    """The golden state_dict as a .npz and as a bundle, for the converter's commands."""
    root = tmp_path_factory.mktemp("converted")
    spec = ModelSpec(default_class_names(7))
    return save_state_dict_file(state_dict, root / "weights.npz"), save_bundle(root / "bundle", variables, spec)


@pytest.mark.slow  # 200 MB of weights converted and written: about 10 s each
@pytest.mark.parametrize("command", ["to-flax", "to-torch"])
def test_an_output_that_cannot_be_written_is_named_in_one_line_and_nothing_is_left(command, converted, tmp_path,
                                                                                   capsys):
    source = converted[0] if command == "to-flax" else converted[1]
    name = "bundle" if command == "to-flax" else "out.npz"
    (tmp_path / "file").write_text("notes")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("keep")
    cases = {tmp_path / "file" / name: f"lies beneath the file {tmp_path / 'file'}, not in a directory"}
    if command == "to-flax":
        cases |= {tmp_path / "file": "is a file, not a directory",
                  tmp_path / "folder": "exists and is not empty; choose a new directory"}
    with tmpfs(tmp_path / "full", "size=20m") as full, tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        cases |= {full / name: rf"no space left on device \(the output needs 213 MB; 21 MB free\)",
                  read_only / name: rf"cannot be written: {read_only} is read-only \(a read-only file system or no "
                                    r"write permission\)"}
        for output, problem in cases.items():
            assert convert_main([command, str(source), str(output)]) == 2
            captured = capsys.readouterr()
            assert re.fullmatch(rf"error: {re.escape(str(output))}: {problem}\n", captured.err), captured.err
            assert captured.out == ""
        assert list(full.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "full", "ro"]
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["keep.txt"]
