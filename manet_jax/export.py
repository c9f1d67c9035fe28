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

from manet_jax import cli
from manet_jax.accelerators import PLATFORMS
from manet_jax.inference.quantize import INT8

FORMATS = ("stablehlo", "savedmodel", "onnx")
CALIBRATION_IMAGES = 16


def build_parser() -> argparse.ArgumentParser:
    from etils import epath

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
    def work() -> None:  # parsed once the tool has started: etils epath takes a second to import
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
        export(args)
    return cli.run(work, whole_process=argv is None)


def export(args: argparse.Namespace) -> None:
    from manet_jax import storage

    output = storage.output(args.output, "--output", folder=True)
    storage.check_outputs([output])  # before the model loads
    cli.start_tensorflow()
    from manet_jax.bundle import load_bundle, state_bytes  # the model's modules load JAX: once the tool has started
    from manet_jax.inference.onnx_export import export_onnx
    from manet_jax.inference.quantize import calibration_images
    from manet_jax.inference.stablehlo import export_stablehlo

    bundle = load_bundle(args.checkpoint).resized(args.image_size, "--image-size")
    calibration = (calibration_images(args.calibration, bundle.spec.image_size, args.calibration_images,
                                      args.data_dir) if args.quantize else None)
    with storage.writing([output], state_bytes(bundle.variables)) as (temporary,):  # the variables, once
        directory = Path(temporary)
        if args.format == "savedmodel":
            from manet_jax.inference.savedmodel import export_savedmodel  # TensorFlow only when needed
            path = export_savedmodel(bundle, directory, args.platforms.split(","))
        elif args.format == "onnx":
            path = export_onnx(bundle, directory, calibration)
        else:
            path = export_stablehlo(bundle, directory, args.platforms.split(","))
    quantized = f", int8 calibrated on {len(calibration)} images of {args.calibration}" if args.quantize else ""
    print(f"wrote {args.format} export of {args.checkpoint} ({bundle.spec.num_classes} classes, "
          f"{bundle.spec.image_size}x{bundle.spec.image_size} input{quantized}) to "
          f"{args.output / path.relative_to(directory)}")


if __name__ == "__main__":
    sys.exit(main())
