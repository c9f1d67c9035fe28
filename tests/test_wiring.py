"""Which multi-scale wiring weights were trained with: `convert inspect` and init_from's checks.

The weights' BatchNorm running statistics come from train-mode forwards of the PyTorch reference
(tests/reference), wired each way, on synthetic faces other than those the check draws.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import golden
from manet_jax.bundle import ModelSpec, default_class_names, save_bundle
from manet_jax.convert.__main__ import main as convert_main
from manet_jax.convert.wiring import BLOCKS, FACES_SEED
from manet_jax.data.face_renderer import render_face
from manet_jax.errors import ConfigError
from manet_jax.training.build import initial_variables
from train_helpers import REPO, environment, make_checkpoint, make_dataset, random_variables

torch = pytest.importorskip("torch")

from reference.manet_torch import MANet as TorchMANet  # noqa: E402

SIZE = 112  # faces at this size, for speed; the weights' statistics come from the same size
WIRINGS = ("2023", "2021")


def faces(count: int, seed: int) -> np.ndarray:
    return np.stack([render_face(i % 7, SIZE, np.random.default_rng((seed, i))) for i in range(count)])


@functools.cache
def trained_statistics(wiring: str) -> dict[str, np.ndarray]:
    """The reference's state_dict (seeded default initialisation) after train-mode forwards of its
    pre-extractor and multi-scale blocks wired as `wiring`: running statistics that average the
    batches' statistics."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = TorchMANet(7, multiscale_wiring=wiring).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average
            module.reset_running_stats()
    images = torch.from_numpy(faces(8, seed=5).transpose(0, 3, 1, 2).astype(np.float32) / 255)
    with torch.no_grad():
        for batch in images.split(4):
            model.multi_scale(model.pre_extractor(batch))
    return {key: value.numpy() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Weight files as the official code and others write them: 2023 as .npz, 2021 as an official
    .pth.tar (`state_dict`, DataParallel `module.` keys)."""
    root = tmp_path_factory.mktemp("weights")
    np.savez(root / "wired2023.npz", **trained_statistics("2023"))
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in trained_statistics("2021").items()}},
               root / "wired2021.pth.tar")
    return {"2023": root / "wired2023.npz", "2021": root / "wired2021.pth.tar"}


def fitting_wirings(output: str) -> list[str]:
    """The `fits` column of inspect's table, per block then overall."""
    rows = [line.split() for line in output.splitlines() if line.startswith((*BLOCKS, "overall"))]
    return [row[-2] for row in rows]


@pytest.mark.slow  # the PyTorch reference's train-mode forwards (module fixture) and inspect's compile
@pytest.mark.parametrize("wiring", WIRINGS)
def test_inspect_tells_the_wirings_apart(weights, capsys, wiring):
    assert convert_main(["inspect", str(weights[wiring]), "--image-size", str(SIZE)]) == 0
    out = capsys.readouterr().out
    assert fitting_wirings(out) == [wiring] * 5, out
    assert f"the weights fit the {wiring} multi-scale wiring" in out
    assert f"--config.multiscale_wiring={wiring}" in out


@pytest.mark.slow  # the PyTorch reference's train-mode forwards (module fixture) and inspect's compile
def test_inspect_on_a_folder_of_faces(weights, tmp_path, capsys):
    for i, face in enumerate(faces(16, seed=FACES_SEED + 1)):
        Image.fromarray(face).save(tmp_path / f"{i:02d}.png")
    assert convert_main(["inspect", str(weights["2021"]), "--images", str(tmp_path), "--image-size", str(SIZE)]) == 0
    out = capsys.readouterr().out
    assert f"16 images of {tmp_path}" in out and fitting_wirings(out) == ["2021"] * 5


@pytest.mark.slow  # inspect compiles MA-Net's blocks at 112x112
def test_inspect_says_when_the_evidence_is_weak(tmp_path, capsys):
    """The golden formula's statistics come from no forward pass: neither wiring fits."""
    np.savez(tmp_path / "formula.npz", **golden.state_dict(0, 7))
    assert convert_main(["inspect", str(tmp_path / "formula.npz"), "--image-size", str(SIZE)]) == 1
    out = capsys.readouterr().out
    assert "weak evidence" in out and "--images DIR" in out


def test_inspect_refuses_what_it_cannot_inspect(tmp_path, capsys):
    np.savez(tmp_path / "resnet.npz", **{"layer3.0.conv1.weight": np.zeros((256, 128, 3, 3), np.float32)})
    assert convert_main(["inspect", str(tmp_path / "resnet.npz")]) == 2
    assert "ImageNet ResNet-18 has no multi-scale blocks" in capsys.readouterr().err
    assert convert_main(["inspect", str(tmp_path / "resnet.npz"), "--max-images", "1"]) == 2
    assert "--max-images=1" in capsys.readouterr().err
    assert convert_main(["inspect", str(tmp_path / "missing.pth")]) == 2


def spec(wiring: str) -> ModelSpec:
    return ModelSpec(default_class_names(7), image_size=SIZE, multiscale_wiring=wiring)


@pytest.mark.slow  # the PyTorch reference's train-mode forwards (module fixture) and inspect's compile
def test_init_from_a_weight_file_warns_when_it_fits_the_other_wiring(weights, caplog):
    caplog.set_level(logging.INFO, logger="manet_jax")
    variables = initial_variables(str(weights["2021"]), spec("2023"), jax.random.key(0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fit the 2021 multi-scale wiring" in warnings[0], warnings
    assert "--config.multiscale_wiring=2021" in warnings[0]
    np.testing.assert_array_equal(variables["batch_stats"]["layer3_2"]["0"]["bn2_2_4"]["var"],
                                  trained_statistics("2021")["layer3_2.0.bn2_2_4.running_var"])
    caplog.clear()
    initial_variables(str(weights["2021"]), spec("2021"), jax.random.key(0))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("fit the 2021 multi-scale wiring" in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # full-size random weights drawn twice, saved, loaded twice: about 5 s
def test_init_from_a_model_of_the_other_wiring_needs_the_flag(tmp_path, caplog):
    bundle = save_bundle(tmp_path / "wired2021", random_variables(), spec("2021"))
    with pytest.raises(ConfigError, match="2021 multi-scale wiring, this run's is 2023. --config.multiscale_wiring"
                                          "=2021 .*--config.init_from_other_wiring=True"):
        initial_variables(str(bundle), spec("2023"), jax.random.key(0))
    variables = initial_variables(str(bundle), spec("2023"), jax.random.key(0), other_wiring=True)
    assert "loading it anyway" in caplog.text
    np.testing.assert_array_equal(variables["params"]["layer4_2"]["1"]["conv2_2_3"]["kernel"],
                                  random_variables()["params"]["layer4_2"]["1"]["conv2_2_3"]["kernel"])


@pytest.mark.slow  # starts the trainer
def test_the_trainer_names_the_flag(tmp_path, compilation_cache):
    """End to end: the trainer stops with one error line naming both ways out."""
    make_dataset(tmp_path / "data")
    init = make_checkpoint(tmp_path / "init", multiscale_wiring="2021")
    command = [sys.executable, "-m", "manet_jax.train", "--config", "configs/demo.py", "--workdir",
               str(tmp_path / "run"), "--config.dataset=synthetic_faces/64_32_20", "--config.image_size=64",
               f"--config.data_dir={tmp_path / 'data'}", f"--config.init_from={init}"]
    result = subprocess.run(command, env=environment(compilation_cache), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: config.init_from:")
    assert "--config.init_from_other_wiring=True" in result.stderr
