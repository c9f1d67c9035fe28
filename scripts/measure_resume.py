"""What a resume costs: restoring the demo's checkpoint (MA-Net's 50.5M parameters and the SGD
momentum, the same at any image size) from a local and from a `gs://` workdir, in one script.

  python scripts/measure_resume.py [--output docs/benchmarks/resume_<machine>_<date>.json]

Times `Checkpoints.restore_latest` (which restores first and reads the arrays one by one only when
the restore fails) and the array-by-array read (`checkpoints.check_readable`) that used to
come before every restore: before = both, after = the restore alone. Medians of 3; the local
reads come from the page cache after the first. The bucket is the Cloud Storage emulator on this
machine (tests/gcs_emulator.py): it measures the storage path, not a network.
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
sys.path.insert(0, str(REPO / "tests"))

from gcs_emulator import serving  # noqa: E402  (tests/, the emulator the tests start)

REPEATS, DATASET = 3, "synthetic_faces/32_64_32"  # a small dataset: only the checkpoint matters


def timings(directory: str, data_dir: str) -> dict[str, float]:
    """Median seconds of the restore and of the array-by-array read, for one checkpoint in `directory`."""
    from manet_jax.bundle import VARIABLES
    from manet_jax.training.build import build
    from manet_jax.training.checkpoints import TRAIN_STATE, Checkpoints, check_readable
    from manet_jax.training.config import load_config

    setup = build(load_config(str(REPO / "configs/demo.py"), [f"dataset={DATASET}", f"data_dir={data_dir}"]))
    checkpoints = Checkpoints(directory)
    checkpoints.save(1, setup.initial_state(), setup.spec, {})
    checkpoints.wait()
    restores, reads = [], []
    for _ in range(REPEATS):
        start = time.monotonic()
        state, _ = checkpoints.restore_latest(setup.abstract_state())
        state.step.block_until_ready()
        restores.append(time.monotonic() - start)
        start = time.monotonic()
        check_readable(checkpoints.directory / "1", (VARIABLES, TRAIN_STATE))
        reads.append(time.monotonic() - start)
    checkpoints.close()
    restore, read = statistics.median(restores), statistics.median(reads)
    return {"restore_seconds": restore, "read_arrays_seconds": read, "before_seconds": restore + read,
            "after_seconds": restore, "after_over_before": restore / (restore + read)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    from manet_jax.data import pipeline

    with tempfile.TemporaryDirectory() as root, serving(Path(root) / "gcs") as emulator:
        pipeline.dataset_info(DATASET, f"{root}/data")
        results = {"local": timings(f"{root}/checkpoints", f"{root}/data"),
                   "bucket": timings(f"gs://{emulator.new_bucket()}/checkpoints", f"{root}/data")}
    results = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
               "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                            if line.startswith("model name")), None), **results}
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
