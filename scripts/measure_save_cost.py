"""What an asynchronous checkpoint save costs the step loop, with and without Orbax's compression.

  python scripts/measure_save_cost.py --output docs/benchmarks/save_cost_<machine>_<date>.json

In one process: the demo's model (50.5M parameters; a checkpoint of about 400 MB with the SGD
momentum) takes `--steps` train steps on one batch at 32x32, without checkpoints and with one
every `--every` steps into a local folder (`training.checkpoints.Checkpoints`), each way
`--repeats` times, alternating. The cost of a save is the step loop's extra seconds per save
(the run's seconds less those of as many steps at the run's median step time): the time `save`
blocks, and the slower steps after it while the write shares the cores. Saved as manet-jax
saves (uncompressed arrays) and, for comparison, with Orbax's default zstd compression.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASET = "synthetic_faces/32_1280_70"


def run(setup, batch, steps: int, every: int, directory: str | None, compressed: bool) -> dict[str, float]:
    """Seconds of `steps` train steps with a save every `every` (none if `directory` is None)."""
    import jax
    import orbax.checkpoint as ocp

    from manet_jax.training import checkpoints as module

    handler = module.arrays_handler
    if compressed:  # Orbax's default, as manet-jax saved until 2026-12-07
        module.arrays_handler = lambda: ocp.PyTreeCheckpointHandler()
    try:
        saver = module.Checkpoints(directory, keep=2) if directory else None
    finally:
        module.arrays_handler = handler
    state = setup.initial_state()
    state, _ = setup.train_step(state, batch)
    jax.block_until_ready(state)
    times, blocked = [], []
    start = time.monotonic()
    for step in range(1, steps + 1):
        began = time.monotonic()
        if saver and step % every == 0:
            saver.save(step, state, setup.spec, {})
            blocked.append(time.monotonic() - began)
        state, _ = setup.train_step(state, batch)
        jax.block_until_ready(state)
        times.append(time.monotonic() - began)
    seconds = time.monotonic() - start
    if saver:
        saver.wait()
        saver.close()
    extra = seconds - steps * statistics.median(times)
    saves = steps // every if saver else 0
    return {"seconds": seconds, "median_step_seconds": statistics.median(times), "extra_seconds": extra,
            "extra_seconds_per_save": extra / saves if saves else None,
            "save_blocks_seconds": statistics.median(blocked) if blocked else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from manet_jax.data import pipeline
    from manet_jax.training.build import build
    from manet_jax.training.config import load_config

    with tempfile.TemporaryDirectory() as root:
        pipeline.dataset_info(DATASET, f"{root}/data")
        setup = build(load_config(str(REPO / "configs/demo.py"), [f"dataset={DATASET}", f"data_dir={root}/data"]))
        batch = next(setup.train_batches())
        runs: dict[str, list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            for name, directory, compressed in (("no_checkpoints", None, False),
                                                ("uncompressed", f"{root}/u{repeat}", False),
                                                ("zstd", f"{root}/z{repeat}", True)):
                runs.setdefault(name, []).append(run(setup, batch, args.steps, args.every, directory, compressed))
                print(name, runs[name][-1], flush=True)
    medians = {name: {key: statistics.median(r[key] for r in rows) if rows[0][key] is not None else None
                      for key in rows[0]} for name, rows in runs.items()}
    results = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), None),
        "steps": args.steps, "every": args.every, "repeats": args.repeats, "runs": runs, "medians": medians,
        "uncompressed_over_zstd_extra_seconds": medians["uncompressed"]["extra_seconds_per_save"]
        / medians["zstd"]["extra_seconds_per_save"],
    }
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
