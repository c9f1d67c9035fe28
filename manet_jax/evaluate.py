"""Evaluate MA-Net on a split: metrics.json and confusion_matrix.png.

  python -m manet_jax.evaluate --config=configs/raf.py --checkpoint=runs/raf [--split=test] [--output_dir=DIR]

--checkpoint is a trainer workdir (its best checkpoint by eval accuracy) or a converted checkpoint
(`python -m manet_jax.convert to-flax ...`). The config gives the dataset, its location and the
image size; --config.KEY=VALUE overrides as in training.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from manet_jax.training.config import parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file of the dataset, e.g. configs/raf.py.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Trainer workdir or converted checkpoint directory.",
                                  required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval_split, else the "
                             "dataset's test split).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the report (default: "
                                  "<checkpoint>/eval/<dataset>_<split>).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that flag and config errors are reported before JAX and TensorFlow load.
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and TFDS log each file operation at INFO
    from manet_jax.training.errors import USER_ERRORS
    from manet_jax.training.evaluation import evaluate_checkpoint

    try:
        evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, _SPLIT.value, _OUTPUT_DIR.value)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
