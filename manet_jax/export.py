"""Model export for serving: `python -m manet_jax.export --checkpoint DIR --format stablehlo|savedmodel|onnx
--output OUT`.

stablehlo: a serialized `jax.export` artifact (variables embedded, symbolic batch size), runnable
with `jax.export.deserialize` and no model code. savedmodel: a TensorFlow SavedModel (jax2tf) with
uint8 (`serving_default`) and float32 (`serving_float`) signatures, for TF Serving and TFLite.
onnx: `manet.onnx` (jax2onnx, the `onnx` extra) for ONNX Runtime, float32 input in [0, 1], any batch
size; --platforms does not apply. `--quantize int8 --calibration DATASET[:SPLIT]|DIR` quantizes it
(ONNX Runtime's static QDQ quantization, the convolutions' weights per channel), calibrated on
--calibration-images images of a dataset or a folder of face crops, as the evaluator preprocesses them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from etils import epath

from manet_jax import cli
from manet_jax.bundle import load_bundle
from manet_jax.errors import ManetError
from manet_jax.inference.onnx_export import export_onnx
from manet_jax.inference.quantize import INT8, calibration_images
from manet_jax.inference.stablehlo import PLATFORMS, export_stablehlo

FORMATS = ("stablehlo", "savedmodel", "onnx")
CALIBRATION_IMAGES = 16


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.export", __doc__)
    parser.add_argument("--checkpoint", required=True, type=epath.Path, metavar="DIR",
                        help="model: a converted bundle, trainer checkpoint or workdir (a local path or gs:// URL)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, type=Path, metavar="OUT",
                        help="new (or empty) directory for the export")
    parser.add_argument("--image-size", type=int, metavar="S", help="model input size (default: the model's)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help="comma-separated platforms to lower for, stablehlo and savedmodel (default: %(default)s)")
    quantization = parser.add_argument_group("int8 ONNX")
    quantization.add_argument("--quantize", choices=(INT8,), help="quantize the ONNX export (static, QDQ)")
    quantization.add_argument("--calibration", metavar="DATASET[:SPLIT]|DIR",
                              help="the images to calibrate on: a prepared dataset (default split: its evaluation "
                                   "split) or a folder of face crops")
    quantization.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, metavar="N",
                              help="how many (%(default)s)")
    quantization.add_argument("--data-dir", help="where --calibration's dataset is prepared (default: as the "
                                                 "trainer finds it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if unknown := set(args.platforms.split(",")) - set(PLATFORMS):
        parser.error(f"--platforms {args.platforms}: unknown {sorted(unknown)}; choose from {','.join(PLATFORMS)}")
    if args.quantize and args.format != "onnx":
        parser.error(f"--quantize: ONNX exports only, not --format {args.format}")
    if bool(args.quantize) != bool(args.calibration):
        parser.error("--quantize and --calibration: give both or neither")
    if args.calibration_images < 1:
        parser.error(f"--calibration-images {args.calibration_images}: must be at least 1")
    return cli.run(lambda: export(args))


def export(args: argparse.Namespace) -> None:
    if args.output.exists() and any(args.output.iterdir()):
        raise ManetError(f"--output {args.output}: exists and is not empty; choose a new directory")
    cli.start_runtime()
    bundle = load_bundle(args.checkpoint).resized(args.image_size, "--image-size")
    args.output.mkdir(parents=True, exist_ok=True)
    if args.format == "savedmodel":
        from manet_jax.inference.savedmodel import export_savedmodel  # TensorFlow only when needed
        path = export_savedmodel(bundle, args.output, args.platforms.split(","))
    elif args.format == "onnx":
        size = bundle.spec.image_size
        calibration = (calibration_images(args.calibration, size, args.calibration_images, args.data_dir)
                       if args.quantize else None)
        path = export_onnx(bundle, args.output, calibration)
    else:
        path = export_stablehlo(bundle, args.output, args.platforms.split(","))
    quantized = f", int8 calibrated on {len(calibration)} images of {args.calibration}" if args.quantize else ""
    print(f"wrote {args.format} export of {args.checkpoint} ({bundle.spec.num_classes} classes, "
          f"{bundle.spec.image_size}x{bundle.spec.image_size} input{quantized}) to {path}")


if __name__ == "__main__":
    sys.exit(main())
