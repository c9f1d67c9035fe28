"""Training input pipeline throughput: `python -m manet_jax.input_benchmark [--threads N]`.

Cases: RAF-DB-like (100x100 face JPEGs -> 224 px RandomResizedCrop + flip) and synthetic_faces
(64 px -> 64 px). Reports wall-clock images/s and images per CPU-second of this process (all
threads counted), which is the throughput of one core whatever else loads the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from manet_jax import cli

# NumPy, TensorFlow and the data modules load inside the work, once the tool has started (`cli.run`).


def fabricate_raf_like(folder: Path, per_class: int, seed: int = 0) -> None:
    """MA-Net image-folder layout with `per_class` 100x100 face JPEGs per class and split."""
    import numpy as np
    from PIL import Image

    from manet_jax.data.face_renderer import CLASSES, render_face

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label in range(len(CLASSES)):
            out = folder / split / str(label)
            out.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(render_face(label, 100, rng)).save(out / f"{i:04d}.jpg", quality=90)


def measure(name: str, data_dir: str, image_size: int, batch_size: int, threads: int,
            seconds: float) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second) of the training iterator."""
    from manet_jax.data import pipeline
    from manet_jax.data.options import input_config

    it = pipeline.train_iterator(name, data_dir, image_size=image_size, global_batch_size=batch_size, seed=0,
                                 options=input_config(), process_index=0, process_count=1, num_threads=threads)
    for _ in range(3):
        next(it)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        count += len(next(it)["label"])
    return (count / (time.perf_counter() - start), count / (time.process_time() - cpu_start))


def measure_all(threads: int = 1, seconds: float = 10.0, batch_size: int = 64, per_class: int = 64
                ) -> dict[str, tuple[float, float]]:
    """(images per wall-clock second, per CPU-second) of each case, printed as they come."""
    import tensorflow_datasets as tfds

    from manet_jax.data.registry import make_builder

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        fabricate_raf_like(Path(tmp, "faces"), per_class)
        make_builder("image_folder/7", tmp).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(Path(tmp, "faces"))))
        cases = {"raf_db-like 100px JPEG -> 224 (image_folder/7)": ("image_folder/7", 224),
                 "synthetic_faces 64px -> 64": (f"synthetic_faces/64_{7 * per_class}_7", 64)}
        for label, (name, size) in cases.items():
            results[label] = wall, cpu = measure(name, tmp, size, batch_size, threads, seconds)
            print(f"{label}: {wall:.0f} images/s with {threads} tf.data thread(s), "
                  f"{cpu:.0f} images per CPU-second (per core)")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.input_benchmark", __doc__)
    parser.add_argument("--threads", type=int, default=1, help="tf.data threads (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per case")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=64, help="fabricated images per class")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        cli.start_tensorflow()
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        measure_all(args.threads, args.seconds, args.batch_size, args.per_class)
    return cli.run(work, whole_process=argv is None)


if __name__ == "__main__":
    sys.exit(main())
