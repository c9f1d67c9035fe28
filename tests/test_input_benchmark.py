"""The pipeline benchmark runs end to end (a smoke test; the figures are reported by hand)."""

from manet_jax import input_benchmark


def test_benchmark_runs(capsys):
    results = input_benchmark.measure_all(seconds=0.2, per_class=2, batch_size=8)
    assert len(results) == 2 and all(wall > 0 and cpu > 0 for wall, cpu in results.values())
    assert "images per CPU-second" in capsys.readouterr().out
    assert input_benchmark.main(["--seconds", "0.1", "--per-class", "1", "--batch-size", "4"]) == 0
