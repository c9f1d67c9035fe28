"""The step benchmark end to end at a small size (a smoke test; the figures are reported by hand)."""

import importlib.util
import json
import os
import platform

import pytest

from manet_jax import benchmark


# ONNX Runtime too where the `onnx` extra and jax2onnx are installed (README's test install has them)
ONNX = all(importlib.util.find_spec(name) for name in ("onnxruntime", "jax2onnx"))


@pytest.mark.slow  # compiles MA-Net's initialiser and eval step, and exports it as ONNX (about 70 s on 2 cores)
def test_benchmark_writes_its_results_with_the_versions(tmp_path, capsys):
    output = tmp_path / "bench.json"
    assert benchmark.main(["--batch-sizes", "2", "--dtypes", "float32", "--modes", "eval", "--image-size", "32",
                           "--steps", "1", "--warmup", "0", "--repeats", "2", "--output", str(output)]
                          + ["--onnx"] * ONNX) == 0
    payload = json.loads(output.read_text())
    assert payload["environment"]["python"] == platform.python_version()
    assert (payload["environment"]["backend"], payload["environment"]["cpu_cores"]) == ("cpu", os.cpu_count())
    assert [(r["framework"], r["mode"], r["batch"]) for r in payload["results"]] == [
        ("jax", "eval", 2), ("onnxruntime", "eval", 2)][:1 + ONNX]
    for result in payload["results"]:
        low, high = result["spread"]
        assert 0 < low <= result["images_per_s"] <= high
    out = capsys.readouterr().out
    assert "jax         float32   eval      2" in out
    assert ("onnxruntime float32   eval      2" in out) == ONNX == ("onnxruntime" in payload["environment"])
