"""Train MA-Net: python -m manet_jax.train --config configs/demo.py --workdir runs/demo [--config.KEY=VALUE ...]

Running the same command again resumes from the workdir's latest checkpoint. Several processes
(every worker of a Cloud TPU pod slice) run the same command with --multiprocess; several
processes on one machine pass --coordinator-address, --num-processes and --process-id.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manet_jax import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.train", __doc__)
    cli.add_config_option(parser)
    parser.add_argument("--workdir", required=True, metavar="DIR",
                        help="directory (or gs:// URL) for checkpoints, logs and metrics")
    parser.add_argument("--multiprocess", action="store_true", help="join a multi-process run that JAX detects "
                        "(Cloud TPU pod slice, SLURM, ...) via jax.distributed.initialize()")
    parser.add_argument("--coordinator-address", metavar="HOST:PORT",
                        help="process 0's address, for several processes without cluster detection "
                             "(with --num-processes and --process-id)")
    parser.add_argument("--num-processes", type=int, help="number of processes (with --coordinator-address)")
    parser.add_argument("--process-id", type=int, help="this process's index (with --coordinator-address)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = cli.parse_with_overrides(build_parser(), argv)
    return cli.run(lambda: train(args, overrides), whole_process=argv is None)


def train(args: argparse.Namespace, overrides: list[str]) -> None:
    from manet_jax.training.config import load_config
    from manet_jax.training.workdir import check_workdir

    config = load_config(args.config, overrides)  # config and workdir errors come before JAX and TensorFlow start
    check_workdir(args.workdir)
    cli.start_tensorflow()
    from manet_jax.mesh import initialize_distributed
    from manet_jax.training.run import train_and_evaluate

    if args.multiprocess or args.coordinator_address:  # JAX's preemption sync point then handles SIGTERM
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    train_and_evaluate(config, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
