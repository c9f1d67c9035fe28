"""Facial expression prediction on image files: `python -m manet_jax.predict PATH... --checkpoint DIR`.

Finds faces (OpenCV's frontal-face cascade), crops each with a margin, preprocesses it as the
evaluation pipeline does and runs MA-Net in batches; prints a table, optionally writes JSON or
CSV (--output) and a PNG per face with attention maps (--visualize). With `--runtime onnx` the
faces go through ONNX Runtime instead of XLA, and --checkpoint is an ONNX export
(`python -m manet_jax.export --format onnx`), which has no attention maps. Exits with 1 only if no
input could be processed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from etils import epath

from manet_jax import cli
from manet_jax.bundle import load_bundle
from manet_jax.inference.faces import MARGIN
from manet_jax.inference.photos import predict_paths
from manet_jax.inference.predictor import Predictor
from manet_jax.inference.records import BRANCHES, ERROR, NO_FACE, OK, WRITERS, format_table, write_records


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.predict", __doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder (searched recursively) or glob")
    parser.add_argument("--checkpoint", required=True, type=epath.Path, metavar="DIR",
                        help="model: a converted bundle, trainer checkpoint or workdir (a local path or gs:// URL)")
    parser.add_argument("--image-size", type=int, metavar="S", help="model input size (default: the model's)")
    parser.add_argument("--no-detect", action="store_true", help="take each image as an aligned face crop")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help="crop margin per side, a fraction of the face box (%(default)s)")
    parser.add_argument("--min-neighbors", type=int, default=5,
                        help="detector strictness: more, fewer false faces (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per forward (%(default)s)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the results to this .json or .csv file")
    parser.add_argument("--branch-probabilities", action="store_true",
                        help="also write the local and global branches' probabilities to --output")
    parser.add_argument("--visualize", type=Path, metavar="DIR", help="write a PNG per face into DIR")
    parser.add_argument("--runtime", choices=("xla", "onnx"), default="xla",
                        help="xla: JAX on all devices; onnx: ONNX Runtime on the CPU, --checkpoint being an ONNX "
                             "export (%(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option, value, least in (("--margin", args.margin, 0), ("--min-neighbors", args.min_neighbors, 0),
                                 ("--batch-size", args.batch_size, 1)):
        if value < least:
            parser.error(f"{option} {value}: must be at least {least}")
    if args.output and args.output.suffix.lower() not in WRITERS:
        parser.error(f"--output {args.output}: unknown format; use a .json or .csv file name")
    if args.output and not args.output.absolute().parent.is_dir():
        parser.error(f"--output {args.output}: its folder does not exist")
    if args.runtime == "onnx" and args.visualize:
        parser.error("--visualize: the ONNX export has no attention maps; use --runtime xla")
    if args.runtime == "onnx" and args.image_size:
        parser.error("--image-size: an ONNX export has a fixed input size; export at the size you need")
    return cli.run(lambda: predict(args))


def predict(args: argparse.Namespace) -> int:
    if args.runtime == "onnx":
        from manet_jax.inference.onnx_export import OnnxPredictor  # ONNX Runtime only when needed
        predictor = OnnxPredictor(Path(args.checkpoint), args.batch_size)
    else:
        cli.start_runtime()
        bundle = load_bundle(args.checkpoint).resized(args.image_size, "--image-size")
        predictor = Predictor(bundle, args.batch_size, maps=args.visualize is not None)
    records = predict_paths(args.paths, predictor, detect=not args.no_detect, margin=args.margin,
                            min_neighbors=args.min_neighbors, visualize=args.visualize)
    class_names = predictor.spec.class_names
    print(format_table(records, class_names))
    if args.output:
        write_records(args.output, records, class_names, BRANCHES if args.branch_probabilities else BRANCHES[:1])
    statuses = {r.file: r.status for r in records}
    counts = Counter(statuses.values())
    print(f"{len(statuses)} inputs: {sum(r.status == OK for r in records)} face(s) in {counts[OK]} image(s), "
          f"{counts[NO_FACE]} without a face, {counts[ERROR]} skipped", file=sys.stderr)
    return 0 if counts[OK] or counts[NO_FACE] else 1


if __name__ == "__main__":
    sys.exit(main())
