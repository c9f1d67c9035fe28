"""The cost of a gs:// workdir: the same short run with a local and a bucket workdir, in one script.

  python scripts/measure_bucket.py --output docs/benchmarks/bucket_<machine>_<date>.json

Starts a Cloud Storage emulator (fake-gcs-server, as tests/test_gcs.py does; the `test` extra),
then trains the demo's model on a small generated dataset four times: with a local and with a
`gs://` workdir, each with a checkpoint after every epoch and with one at the end only. Steps/s
are timed from the trainer's own step lines, from the end of the second epoch (the train and eval
steps compiled, one checkpoint written) to the last step, evaluations included; the asynchronous saves' stall is how much slower the step loop runs with a checkpoint
every epoch than with none until the end. Then a checkpoint of the model is saved 3 times into
each workdir: the seconds until `save` returns (the step loop waits that long) and until the write
is complete. An emulator on this machine measures the storage path's own overhead, not a real
bucket's network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gcs_emulator import serving  # noqa: E402  (tests/, the emulator the tests start)

DATASET, EPOCHS, STEPS_PER_EPOCH = "synthetic_faces/32_1280_70", 5, 20  # batch 64


def train(workdir: str, data_dir: Path, every: int, env: dict[str, str]) -> dict[str, float]:
    """One run: steps/s after the first epoch (timed from its step lines) and the run's seconds."""
    command = [sys.executable, "-m", "manet_jax.train", "--config", "configs/demo.py", "--workdir", workdir,
               f"--config.dataset={DATASET}", f"--config.data_dir={data_dir}", f"--config.num_epochs={EPOCHS}",
               f"--config.checkpoint_every_epochs={every}", "--config.log_every_steps=5"]
    start, times = time.monotonic(), {}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        step = re.search(r"step (\d+)/(\d+)", line)
        if step:
            times[int(step.group(1))] = time.monotonic()
    if process.wait():
        raise SystemExit("".join(lines[-20:]))
    first, last = 2 * STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH  # the eval step compiles in epoch 1's end
    return {"steps_per_second": (last - first) / (times[last] - times[first]),
            "run_seconds": time.monotonic() - start}


def save_times(directory: str, repeats: int = 3) -> dict[str, float]:
    """Seconds until Checkpoints.save returns and until the write is complete (medians)."""
    from manet_jax.training.build import build
    from manet_jax.training.checkpoints import Checkpoints
    from manet_jax.training.config import load_config

    setup = build(load_config(str(REPO / "configs/demo.py"), [f"dataset={DATASET}"]))
    state, checkpoints = setup.initial_state(), Checkpoints(directory, keep=repeats + 1)
    returned, complete = [], []
    for step in range(1, repeats + 1):
        start = time.monotonic()
        checkpoints.save(step, state, setup.spec, {})
        returned.append(time.monotonic() - start)
        checkpoints.wait()
        complete.append(time.monotonic() - start)
    checkpoints.close()
    return {"save_returns_seconds": statistics.median(returned), "save_complete_seconds": statistics.median(complete)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    from manet_jax.data import pipeline

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        with serving(root / "gcs") as emulator:
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(root / "cache")}
            pipeline.dataset_info(DATASET, str(root / "data"))
            bucket = emulator.new_bucket()
            runs = {}
            for where in ("local", "bucket"):
                for every, name in ((1, "every_epoch"), (EPOCHS, "at_the_end")):
                    workdir = str(root / f"{where}_{name}") if where == "local" else f"gs://{bucket}/{name}"
                    runs[f"{where}_{name}"] = train(workdir, root / "data", every, env)
                    print(f"{where} workdir, checkpoint {name.replace('_', ' ')}: {runs[f'{where}_{name}']}", flush=True)
            saves = {"local": save_times(str(root / "saves")), "bucket": save_times(f"gs://{bucket}/saves")}
    results = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), None),
        "dataset": DATASET, "epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH, "runs": runs, "saves": saves,
        "bucket_over_local_steps_per_second": runs["bucket_every_epoch"]["steps_per_second"]
        / runs["local_every_epoch"]["steps_per_second"],
        "bucket_save_stall": 1 - runs["bucket_every_epoch"]["steps_per_second"]
        / runs["bucket_at_the_end"]["steps_per_second"],
        "local_save_stall": 1 - runs["local_every_epoch"]["steps_per_second"]
        / runs["local_at_the_end"]["steps_per_second"],
    }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
