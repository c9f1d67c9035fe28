"""Model export for serving: `python -m manet_jax.export --checkpoint DIR --format stablehlo|savedmodel
--output OUT`.

stablehlo: a serialized `jax.export` artifact (variables embedded, symbolic batch size), runnable
with `jax.export.deserialize` and no model code. savedmodel: a TensorFlow SavedModel (jax2tf) with
uint8 (`serving_default`) and float32 (`serving_float`) signatures, for TF Serving and TFLite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from etils import epath

from manet_jax.checkpoints import CheckpointError
from manet_jax.inference.export import PLATFORMS, export_stablehlo
from manet_jax.inference.model import load_model
from manet_jax.inference.savedmodel import export_savedmodel

EXPORTERS = {"stablehlo": export_stablehlo, "savedmodel": export_savedmodel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manet_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=epath.Path, metavar="DIR",
                        help="checkpoint or trainer workdir (a local path or a gs:// URL)")
    parser.add_argument("--format", required=True, choices=list(EXPORTERS))
    parser.add_argument("--output", required=True, type=Path, metavar="OUT",
                        help="new (or empty) directory for the export")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help="model input size (default: the workdir's, else 224)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help="comma-separated platforms to lower for (default: %(default)s)")
    args = parser.parse_args(argv)
    platforms = args.platforms.split(",")
    if unknown := set(platforms) - set(PLATFORMS):
        parser.error(f"--platforms {args.platforms}: unknown {sorted(unknown)}; choose from {','.join(PLATFORMS)}")
    if args.output.exists() and any(args.output.iterdir()):
        parser.error(f"--output {args.output}: exists and is not empty; choose a new directory")
    try:
        model = load_model(args.checkpoint, args.image_size)
    except (CheckpointError, ValueError) as e:
        parser.error(str(e))
    args.output.mkdir(parents=True, exist_ok=True)
    path = EXPORTERS[args.format](model, args.output, platforms)
    print(f"wrote {args.format} export of {args.checkpoint} ({len(model.class_names)} classes, "
          f"{model.image_size}x{model.image_size} input) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
