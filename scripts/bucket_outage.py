"""A bucket gone for longer than the storage libraries retry, while a checkpoint is written.

  python scripts/bucket_outage.py --output docs/benchmarks/bucket_outage_<date>.json

The suite cuts the network for 15 s during a checkpoint write (carried over by the retries) and
between writes (the run stops at its next write); this is the outage between the two, too long
for the suite: tensorstore, which writes the checkpoints' arrays, retries a failed request for
about 15 minutes. On a Cloud Storage emulator (fake-gcs-server, the `test` extra) the demo's
model trains at 32x32 for 3 epochs of 20 steps with a `gs://` workdir and a checkpoint each epoch;
the emulator is stopped once the first objects of the epoch-2 checkpoint are in the bucket and
kept stopped until the trainer has exited (at most `--limit` minutes). Then it is started again
and the same command resumes. Reported: how the first run ended (its exit status, its `error:`
lines, the minutes from the outage to its exit), whether the epoch-1 checkpoint is untouched,
and whether the resumed run's metric records are those of an uninterrupted run in the bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gcs_emulator import serving  # noqa: E402  (tests/, the emulator the tests start)

DATASET, EPOCHS, STEPS_PER_EPOCH = "synthetic_faces/32_1280_70", 3, 20  # batch 64


def command(workdir: str, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "manet_jax.train", "--config", "configs/demo.py", "--workdir", workdir,
            f"--config.dataset={DATASET}", f"--config.data_dir={data_dir}", f"--config.num_epochs={EPOCHS}",
            "--config.log_every_steps=5"]


def objects(url: str) -> dict[str, tuple]:
    """The objects under the bucket folder `url`: name -> (size, MD5, CRC32C, generation)."""
    from manet_jax import storage

    bucket, prefix = storage.bucket_and_name(url)
    return {blob.name: (blob.size, blob.md5_hash, blob.crc32c, blob.generation)
            for blob in storage.client().list_blobs(bucket, prefix=prefix + "/")}


def records(url: str) -> list[dict]:
    """The run's metric records without their timings."""
    from manet_jax import storage

    text, _ = storage.read_object(f"{url}/metrics.jsonl")
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_second"}
            for line in text.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the findings as JSON")
    parser.add_argument("--limit", type=float, default=40, help="minutes to wait for the cut-off run to exit")
    args = parser.parse_args()
    from manet_jax import storage
    from manet_jax.data import pipeline

    first, second = STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        with serving(root / "gcs") as emulator:
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(root / "cache")}
            pipeline.dataset_info(DATASET, str(root / "data"))
            bucket = emulator.new_bucket()
            reference, workdir = f"gs://{bucket}/reference", f"gs://{bucket}/run"
            done = subprocess.run(command(reference, root / "data"), cwd=REPO, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            print(f"uninterrupted run: {len(records(reference))} records", flush=True)

            log = (root / "cut_off.log").open("w+")
            process = subprocess.Popen(command(workdir, root / "data"), cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, text=True)
            kept = None
            while process.poll() is None:  # the epoch-1 checkpoint complete, the epoch-2 one begun
                if kept is None and storage.read_object(f"{workdir}/checkpoints/{first}/commit_success.txt"):
                    kept = objects(f"{workdir}/checkpoints/{first}")
                if kept is not None and objects(f"{workdir}/checkpoints/{second}"):
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("the run ended before its epoch-2 checkpoint was written")
            emulator.stop()
            cut = time.monotonic()
            print(f"emulator stopped during the write of checkpoint {second}", flush=True)
            try:
                code = process.wait(timeout=args.limit * 60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = None
            minutes = (time.monotonic() - cut) / 60
            emulator.start()
            untouched = kept == objects(f"{workdir}/checkpoints/{first}")
            log.seek(0)
            lines = log.read().splitlines()
            print(f"cut-off run: exit status {code} after {minutes:.1f} min", flush=True)

            resumed = subprocess.run(command(workdir, root / "data"), cwd=REPO, env=env, capture_output=True,
                                     text=True)
            findings = {
                "date": time.strftime("%Y-%m-%d"), "dataset": DATASET, "epochs": EPOCHS,
                "steps_per_epoch": STEPS_PER_EPOCH,
                "cut_off_run": {"exit_status": code, "minutes_from_outage_to_exit": round(minutes, 2),
                                "error_lines": [line for line in lines if line.startswith("error:")],
                                "tracebacks": sum("Traceback" in line for line in lines), "last_lines": lines[-5:]},
                f"checkpoint_{first}_untouched": untouched,
                "resumed_run": {"exit_status": resumed.returncode,
                                "resumed_from": next((line.split("resuming from checkpoint ")[1].split()[0]
                                                      for line in resumed.stderr.splitlines()
                                                      if "resuming from checkpoint" in line), None),
                                "records_as_uninterrupted": resumed.returncode == 0
                                and records(workdir) == records(reference)},
            }
    print(json.dumps(findings, indent=2))
    if args.output:
        args.output.write_text(json.dumps(findings, indent=2) + "\n")


if __name__ == "__main__":
    main()
