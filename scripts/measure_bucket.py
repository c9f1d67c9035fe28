"""The cost of a gs:// workdir: the same short runs with a local and a bucket workdir, in one script.

  python scripts/measure_bucket.py --output docs/benchmarks/bucket_<machine>_<date>.json

Starts a Cloud Storage emulator (fake-gcs-server, as tests/test_gcs.py does; the `test` extra),
then trains the demo's model at 32x32 with a local and with a `gs://` workdir, each with a
checkpoint after every epoch and with one at the end only, at two epoch lengths: 20 steps (a
checkpoint every 6 s of training, the stress case) and the demo's own 131 steps (its 8,400 images at
batch 64). Steps/s are timed from the trainer's own step lines, from the end of the second epoch
(the train and eval steps compiled, one checkpoint written) to the last step, evaluations
included; the asynchronous saves' stall is how much slower the step loop runs with a checkpoint
every epoch than with none until the end. Then a checkpoint of the model is saved 3 times into
each workdir: the seconds until `save` returns (the step loop waits that long) and until the write
is complete. An emulator on this machine measures the storage path's own overhead, not a real
bucket's network, and takes its own share of the cores that train: the CPU seconds it spends in
each run are reported beside it.
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

# name: (dataset, epochs, steps an epoch at the demo's batch of 64)
LENGTHS = {"epochs_of_20_steps": ("synthetic_faces/32_1280_70", 5, 20),
           "epochs_of_131_steps": ("synthetic_faces/32_8400_70", 4, 131)}


def cpu_seconds(pid: int) -> float:
    """The user and system CPU seconds process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train(workdir: str, data_dir: Path, length: str, every: int, env: dict[str, str],
          emulator: int) -> dict[str, float]:
    """One run: steps/s after the second epoch (timed from its step lines), the run's seconds and
    the CPU seconds the emulator (process `emulator`) spent meanwhile."""
    dataset, epochs, steps_per_epoch = LENGTHS[length]
    command = [sys.executable, "-m", "manet_jax.train", "--config", "configs/demo.py", "--workdir", workdir,
               f"--config.dataset={dataset}", f"--config.data_dir={data_dir}", f"--config.num_epochs={epochs}",
               f"--config.checkpoint_every_epochs={every}", "--config.log_every_steps=5"]
    start, times, served = time.monotonic(), {}, cpu_seconds(emulator)
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
    first = min(step for step in times if step >= 2 * steps_per_epoch)  # the eval step compiles in epoch 1's end
    last = max(times)
    return {"steps_per_second": (last - first) / (times[last] - times[first]),
            "run_seconds": time.monotonic() - start, "emulator_cpu_seconds": cpu_seconds(emulator) - served}


def save_times(directory: str, data_dir: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds until Checkpoints.save returns and until the write is complete (medians)."""
    from manet_jax.training.build import build
    from manet_jax.training.checkpoints import Checkpoints
    from manet_jax.training.config import load_config

    setup = build(load_config(str(REPO / "configs/demo.py"), [f"dataset={LENGTHS['epochs_of_20_steps'][0]}",
                                                                 f"data_dir={data_dir}"]))
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
            bucket = emulator.new_bucket()
            runs: dict[str, dict[str, dict[str, float]]] = {}
            for length, (dataset, epochs, _) in LENGTHS.items():
                pipeline.dataset_info(dataset, str(root / "data"))
                for where in ("local", "bucket"):
                    for every, name in ((1, "every_epoch"), (epochs, "at_the_end")):
                        run = f"{where}_{name}"
                        workdir = str(root / length / run) if where == "local" else f"gs://{bucket}/{length}/{run}"
                        runs.setdefault(length, {})[run] = train(workdir, root / "data", length, every, env,
                                                               emulator.process.pid)
                        print(f"{length}, {where} workdir, checkpoint {name.replace('_', ' ')}: "
                              f"{runs[length][run]}", flush=True)
            saves = {"local": save_times(str(root / "saves"), root / "data"),
                     "bucket": save_times(f"gs://{bucket}/saves", root / "data")}
    results = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), None),
        "lengths": {length: {"dataset": dataset, "epochs": epochs, "steps_per_epoch": steps}
                    for length, (dataset, epochs, steps) in LENGTHS.items()},
        "runs": runs, "saves": saves,
        "ratios": {length: {
            "bucket_over_local_steps_per_second": run["bucket_every_epoch"]["steps_per_second"]
            / run["local_every_epoch"]["steps_per_second"],
            "bucket_save_stall": 1 - run["bucket_every_epoch"]["steps_per_second"]
            / run["bucket_at_the_end"]["steps_per_second"],
            "local_save_stall": 1 - run["local_every_epoch"]["steps_per_second"]
            / run["local_at_the_end"]["steps_per_second"]} for length, run in runs.items()},
    }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
