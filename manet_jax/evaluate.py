"""Evaluate MA-Net on one or several splits: metrics.json and confusion_matrix.png for each.

  python -m manet_jax.evaluate --config configs/raf.py --checkpoint runs/raf [--split test] [--output-dir DIR]
  python -m manet_jax.evaluate --config configs/raf.py --checkpoint runs/raf --config.eval_dataset=sfew,fed_ro

--checkpoint is a model: a trainer workdir (its best checkpoint by eval accuracy), one of its
checkpoints, or a converted bundle (`python -m manet_jax.convert to-flax ...`). The config gives
the dataset, its location and the image size, and the eval sets: config.eval_dataset (cross-dataset
evaluation: 'NAME[:SPLIT],...'), else the dataset's split the paper reports on; --config.KEY=VALUE
overrides as in training.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manet_jax import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.evaluate", __doc__)
    cli.add_config_option(parser)
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="trainer workdir, checkpoint or bundle")
    parser.add_argument("--split", help="split of the eval sets that name none (as --config.eval_split; default: "
                                        "the one the paper reports on, per dataset)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where to write the reports, one folder <dataset>_<split> per eval set "
                             "(default: <checkpoint>/eval)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = cli.parse_with_overrides(build_parser(), argv)
    if args.split:
        overrides.append(f"eval_split={args.split}")
    return cli.run(lambda: evaluate(args, overrides))


def evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    from manet_jax.training.config import load_config

    config = load_config(args.config, overrides)
    cli.start_runtime()
    from manet_jax.training.evaluation import evaluate_checkpoint

    evaluate_checkpoint(config, args.checkpoint, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
