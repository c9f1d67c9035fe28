"""The command-line options of the tools that find and crop faces and run a model on them
(`predict`, `serve`): the model, its input size, the detector, the crop or the alignment, the batch,
the runtime."""

from __future__ import annotations

import argparse

from etils import epath

from manet_jax.inference.detectors import DETECTORS
from manet_jax.inference.faces import MARGIN


def add_face_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """--checkpoint, --image-size, --detector, --margin, --align/--no-align, --min-neighbors,
    --batch-size (default `batch_size`) and --runtime."""
    parser.add_argument("--checkpoint", required=True, type=epath.Path, metavar="DIR",
                        help="model: a converted bundle, trainer checkpoint or workdir (a local path or gs:// URL)")
    parser.add_argument("--image-size", type=int, metavar="S", help="model input size (default: the model's)")
    parser.add_argument("--detector", choices=DETECTORS, default="cascade",
                        help="face detector: cascade (OpenCV's) or mtcnn (needs the mtcnn extra) (%(default)s)")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help="crop margin per side, a fraction of the face box (%(default)s)")
    parser.add_argument("--align", action=argparse.BooleanOptionalAction,
                        help="warp each face by its landmarks onto the model's face template instead of cropping "
                             "its box (default: where the detector gives landmarks, mtcnn, and the model carries a "
                             "template; --align without one uses a default template)")
    parser.add_argument("--min-neighbors", type=int, default=5,
                        help="the cascade's strictness: more, fewer false faces (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="faces per forward (%(default)s)")
    parser.add_argument("--runtime", choices=("xla", "onnx"), default="xla",
                        help="xla: JAX on all devices; onnx: ONNX Runtime on the CPU, --checkpoint being an ONNX "
                             "export (%(default)s)")


def check_face_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       *more: tuple[str, float, float]) -> None:
    """Stops with argparse's usage error where --margin or --min-neighbors is below 0, --batch-size
    below 1, or one of `more` ((option, value, least), ...) below its least; or where --runtime onnx
    comes with --image-size (an export's size is fixed) or a --checkpoint URL (ONNX Runtime reads a
    local file)."""
    for option, value, least in (("--margin", args.margin, 0), ("--min-neighbors", args.min_neighbors, 0),
                                 ("--batch-size", args.batch_size, 1), *more):
        if value < least:
            parser.error(f"{option} {value}: must be at least {least}")
    if args.runtime == "onnx" and args.image_size:
        parser.error("--image-size: an ONNX export has a fixed input size; export at the size you need")
    if args.runtime == "onnx" and "://" in str(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint}: ONNX Runtime reads an export from a local folder; copy it here")
