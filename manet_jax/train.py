"""Train MA-Net: python -m manet_jax.train --config=configs/demo.py --workdir=runs/demo [--config.KEY=VALUE ...]

Running the same command again resumes from the workdir's latest checkpoint. Several processes
(every worker of a Cloud TPU pod slice) run the same command with --multiprocess; several
processes on one machine pass --coordinator_address, --num_processes and --process_id.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from manet_jax.training.config import parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/raf.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.", required=True)
_MULTIPROCESS = flags.DEFINE_bool("multiprocess", False, "Join a multi-process run that JAX detects "
                                  "(Cloud TPU pod slice, SLURM, ...) via jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for several processes "
                                   "without cluster detection (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Imported here so that flag and config errors are reported before JAX and TensorFlow load.
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and TFDS log each file operation at INFO
    from manet_jax.training.errors import USER_ERRORS
    from manet_jax.training.loop import train_and_evaluate
    from manet_jax.training.sharding import initialize_distributed

    if _MULTIPROCESS.value or _COORDINATOR.value:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
