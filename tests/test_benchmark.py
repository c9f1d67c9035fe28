"""The step benchmark end to end at a small size (a smoke test; the figures are reported by hand)."""

import json
import os
import platform

import pytest

from manet_jax import benchmark


@pytest.mark.slow  # compiles MA-Net's initialiser and eval step (about 40 s on 2 cores)
def test_benchmark_writes_its_results_with_the_versions(tmp_path, capsys):
    output = tmp_path / "bench.json"
    assert benchmark.main(["--batch-sizes", "2", "--dtypes", "float32", "--modes", "eval", "--image-size", "32",
                           "--steps", "1", "--warmup", "0", "--repeats", "2", "--output", str(output)]) == 0
    payload = json.loads(output.read_text())
    assert payload["environment"]["python"] == platform.python_version()
    assert (payload["environment"]["backend"], payload["environment"]["cpu_cores"]) == ("cpu", os.cpu_count())
    [result] = payload["results"]
    assert (result["framework"], result["mode"], result["batch"]) == ("jax", "eval", 2)
    low, high = result["spread"]
    assert 0 < low <= result["images_per_s"] <= high
    assert "jax         float32   eval      2" in capsys.readouterr().out


def test_onnx_without_eval_is_refused_before_any_work(capsys):
    assert benchmark.main(["--modes", "train", "--onnx"]) == 2
    assert capsys.readouterr().err.strip() == "error: --onnx times evaluation only: add eval to --modes"
