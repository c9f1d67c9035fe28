"""The face template of a dataset: `python -m manet_jax.face_template --dataset raf_db [--split train]
[--max-images N] --output FILE`.

Runs MTCNN over the split's images as stored and takes the five landmarks of each image's largest
face as fractions of the image's width and height (the model's input coordinates once evaluation
resizes the image); per landmark, the median over the faces is the template and the median absolute
deviation its spread. Prints the template and writes it as JSON, for `--config.face_template=FILE`
(the trainer keeps it in the model's header) and `convert to-flax --face-template FILE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from manet_jax import cli

SHOWN_AT = 100  # the printed template's pixels: RAF-DB's aligned images are 100x100


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.face_template", __doc__)
    parser.add_argument("--dataset", required=True, help="a prepared dataset, e.g. raf_db or affectnet/7")
    parser.add_argument("--split", default="train", help="its split (%(default)s)")
    parser.add_argument("--data-dir", help="where the dataset is prepared (default: as the trainer finds it)")
    parser.add_argument("--max-images", type=int, metavar="N", help="the first N images only (default: all)")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE", help="the template's JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images {args.max_images}: must be at least 1")
    return cli.run(lambda: face_template(args), whole_process=argv is None)


def face_template(args: argparse.Namespace) -> None:
    from manet_jax import storage  # etils epath takes a second to import: once the tool has started

    output = storage.output(args.output, "--output")
    storage.check_outputs([output])  # before the images are read
    cli.start_tensorflow()
    from manet_jax.data import pipeline  # TensorFlow and the model's modules: once the tool has started
    from manet_jax.inference.alignment import measure_template
    from manet_jax.inference.detectors import get_detector

    detect = get_detector("mtcnn")
    count, images = pipeline.split_images(args.dataset, args.data_dir, args.split, args.max_images)
    faces = []
    for pixels in images:
        if found := detect(pixels):
            largest = max(found, key=lambda box: box.width * box.height)
            faces.append(np.asarray(largest.landmarks) / pixels.shape[1::-1])
    template = measure_template(faces, count, f"MTCNN's landmarks on {args.dataset}:{args.split}, the median of "
                                              f"{len(faces)} faces in {count} images")
    with storage.writing([output]) as (temporary,):
        temporary.write_text(json.dumps(dataclasses.asdict(template), indent=2) + "\n")
    print(f"{template.describe(SHOWN_AT)}\nwrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
