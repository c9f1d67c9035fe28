"""`python -m manet_jax.compare` against the independently written PyTorch MA-Net (tests/reference)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import golden

torch = pytest.importorskip("torch")

from manet_jax import compare  # noqa: E402
from reference import manet_torch  # noqa: E402

REFERENCE_SOURCE = Path(manet_torch.__file__)
SPATIAL_POOL = "torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)"
WIRING_DEFAULT = 'multiscale_wiring: str = "2023"'
GLOBAL_HEAD = "logits_global = self.fc_2(torch.flatten(self.avgpool(glob), 1))"


def make_repo(root: Path, source: str) -> Path:
    """A directory laid out like the official repository: `model/manet.py` holding `source`."""
    (root / "model").mkdir(parents=True)
    (root / "model" / "manet.py").write_text(source)
    return root


@pytest.mark.slow  # the PyTorch reference and MA-Net at 224x224
def test_passes_on_spec_reference(tmp_path: Path, capsys) -> None:
    repo = make_repo(tmp_path / "repo", REFERENCE_SOURCE.read_text())
    images = tmp_path / "images" / "0"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (300, 250, 3), np.uint8)).save(images / "b.jpg")
    report = tmp_path / "report.json"
    code = compare.main(["--reference-repo", str(repo), "--images", str(tmp_path / "images"),
                         "--output", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out and "wiring:    2023 " in out
    rows = json.loads(report.read_text())["rows"]
    names = {(row["mode"], row["name"]) for row in rows}
    for mode in ("eval", "train"):
        assert {(mode, name) for name in compare.STAGES + compare.LOGITS} <= names
    assert ("train", "bn stats layer4_2") in names
    assert all(row["ok"] is not False for row in rows)
    assert "model" not in sys.modules


@pytest.mark.slow  # the PyTorch reference and MA-Net at 224x224
def test_detects_reference_with_mean_max_spatial_pooling(tmp_path: Path, capsys) -> None:
    source = REFERENCE_SOURCE.read_text()
    assert SPATIAL_POOL in source
    broken = source.replace(SPATIAL_POOL, "torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)")
    # Without the `manet()` factory the tool builds `MANet(num_classes=...)` directly.
    broken = broken[:broken.index("\n\ndef manet()")] + "\n"
    code = compare.main(["--reference-repo", str(make_repo(tmp_path, broken)), "--random", "2"])
    out = capsys.readouterr().out
    assert code == 1, out
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("FAIL") and "eval layer3_1_p1" in verdict and "eval logits_local" in verdict
    assert "eval layer2" not in verdict and "eval layer3_2" not in verdict and "logits_global" not in verdict


@pytest.mark.parametrize("layout, message", [
    (None, "no such directory"),
    ({}, "does not hold the MA-Net reference"),
    ({"manet.py": "import torch\nfrom .attention import CBAM\n"}, "No module named 'model.attention'"),
    ({"manet.py": "import torch\n\nclass ResNet:\n    pass\n"}, "defines no class MANet"),
])
def test_reports_unusable_reference(tmp_path: Path, capsys, layout: dict | None, message: str) -> None:
    repo = tmp_path / "repo"
    if layout is not None:
        (repo / "model").mkdir(parents=True)
        for name, text in layout.items():
            (repo / "model" / name).write_text(text)
    assert compare.main(["--reference-repo", str(repo)]) == 2
    assert message in capsys.readouterr().err
    assert "model" not in sys.modules


def test_reports_state_dict_mismatch(tmp_path: Path, capsys) -> None:
    extra = ("\n\nclass MANet(MANet):\n    def __init__(self, num_classes: int = 12666) -> None:\n"
             "        super().__init__(num_classes)\n        self.extra = nn.Linear(2, 2)\n")
    repo = make_repo(tmp_path, REFERENCE_SOURCE.read_text() + extra)
    assert compare.main(["--reference-repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "does not match manet_jax's MANet" in err and "extra.weight" in err


@pytest.mark.parametrize("init", [None, "from .attention import CBAM\n"])
def test_load_reference_imports_relative_modules(tmp_path: Path, init: str | None) -> None:
    repo = make_repo(tmp_path, "from .attention import CBAM\n\n\nclass MANet(CBAM):\n    pass\n")
    (repo / "model" / "attention.py").write_text("class CBAM:\n    pass\n")
    if init is not None:
        (repo / "model" / "__init__.py").write_text(init)
    assert compare.load_reference(repo).MANet.__mro__[1].__name__ == "CBAM"


def test_load_checkpoint_keeps_heads_of_another_size() -> None:
    model = compare.build_reference(manet_torch, 8)
    assert model.fc_1.out_features == 8
    state = golden.state_dict(0, 7)
    compare.load_checkpoint(model, state, "golden.pth")
    loaded = model.state_dict()
    np.testing.assert_array_equal(loaded["layer4_2.1.bn2_2_1.running_var"].numpy(),
                                  state["layer4_2.1.bn2_2_1.running_var"])
    assert loaded["fc_2.weight"].shape == (8, 512)
    del state["layer2.0.conv1.weight"]
    with pytest.raises(compare.CompareError, match="layer2.0.conv1.weight"):
        compare.load_checkpoint(model, state, "golden.pth")


def trained_looking_checkpoint(path: Path) -> Path:
    """An official-format checkpoint (`state_dict`, `module.` keys) of the reference's seeded default
    initialisation with BatchNorm weights and statistics perturbed and heads scaled like trained
    ones: logits in the tens to hundreds."""
    torch.manual_seed(0)
    state = manet_torch.MANet(7).state_dict()
    rng = np.random.default_rng(0)
    for key, value in state.items():
        if key.startswith(("fc_1.", "fc_2.")):
            value.mul_(40)
        elif key.endswith(".running_var") or (key.endswith(".weight") and value.ndim == 1):  # BatchNorm
            value.mul_(torch.from_numpy(rng.uniform(0.5, 1.5, value.shape).astype(np.float32)))
        elif key.endswith(".running_mean"):
            value.add_(torch.from_numpy(rng.uniform(-0.1, 0.1, value.shape).astype(np.float32)))
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    return path


def judged(report: Path) -> dict[tuple[str, str], dict]:
    return {(row["mode"], row["name"]): row for row in json.loads(report.read_text())["rows"] if row["ok"] is not None}


@pytest.mark.slow  # the PyTorch reference and MA-Net at 224x224
def test_a_2021_clone_with_large_logits_passes_and_a_small_head_error_fails(tmp_path: Path, capsys) -> None:
    """The wiring of a clone at the 2021 code is found, and logits are judged relative to their size."""
    source = REFERENCE_SOURCE.read_text()
    assert WIRING_DEFAULT in source and GLOBAL_HEAD in source
    source = source.replace(WIRING_DEFAULT, WIRING_DEFAULT.replace("2023", "2021"))
    checkpoint = trained_looking_checkpoint(tmp_path / "trained.pth.tar")
    report = tmp_path / "report.json"
    arguments = ["--checkpoint", str(checkpoint), "--random", "2", "--output", str(report)]
    code = compare.main(["--reference-repo", str(make_repo(tmp_path / "2021", source)), *arguments])
    out = capsys.readouterr().out
    assert code == 0 and "wiring:    2021 " in out, out
    assert json.loads(report.read_text())["multiscale_wiring"] == "2021"
    logits = judged(report)[("eval", "logits_global")]
    assert logits["max_abs_ref"] > 50 and logits["tolerance"] == pytest.approx(1e-5 * logits["max_abs_ref"])

    off = source.replace(GLOBAL_HEAD, GLOBAL_HEAD + " * (1 + 5e-5)")  # numerics that do not agree
    code = compare.main(["--reference-repo", str(make_repo(tmp_path / "off", off)), *arguments])
    out = capsys.readouterr().out
    failed = {name for name, row in judged(report).items() if not row["ok"]}
    assert code == 1 and "wiring:    2021 " in out, out
    assert {("eval", "logits_global"), ("train", "logits_global")} <= failed
    assert not {name for name in failed if name[1] in compare.STAGES or name[1].startswith("bn stats")}


def test_detect_wiring_names_neither_for_another_order() -> None:
    """Like bb33471, which ran cascade B's first step on the wrong chunk for a few hours."""
    torch.manual_seed(0)
    reference = manet_torch.MANet(7, multiscale_wiring="2021")
    variables = compare.reference_variables(reference)
    wiring, differences = compare.detect_wiring(reference, variables)
    assert wiring == "2021" and differences["2021"] < 1e-5 < 0.1 < differences["2023"]
    reference.layer3_2[0].cascade_b_order = (4, 2, 3, 1)
    wiring, differences = compare.detect_wiring(reference, variables)
    assert wiring is None and min(differences.values()) > 0.1, differences
