"""Evaluate MA-Net on a split: metrics.json and confusion_matrix.png.

  python -m manet_jax.evaluate --config configs/raf.py --checkpoint runs/raf [--split test] [--output-dir DIR]

--checkpoint is a model: a trainer workdir (its best checkpoint by eval accuracy), one of its
checkpoints, or a converted bundle (`python -m manet_jax.convert to-flax ...`). The config gives
the dataset, its location and the image size; --config.KEY=VALUE overrides as in training.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manet_jax import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("manet_jax.evaluate", __doc__)
    cli.add_config_option(parser)
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="trainer workdir, checkpoint or bundle")
    parser.add_argument("--split", help="split to evaluate (default: config.eval_split, else the dataset's test split)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where to write the report (default: <checkpoint>/eval/<dataset>_<split>)")
    args, overrides = cli.parse_with_overrides(parser, argv)
    return cli.run(lambda: evaluate(args, overrides))


def evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    from manet_jax.training.config import load_config

    config = load_config(args.config, overrides)
    cli.start_runtime()
    from manet_jax.training.evaluation import evaluate_checkpoint

    evaluate_checkpoint(config, args.checkpoint, args.split, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
