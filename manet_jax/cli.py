"""What every command-line tool shares: its parser, config overrides, start-up and how it fails.

Tools take GNU-style options (`--batch-size 32` or `--batch-size=32`) and run as
`python -m manet_jax.<tool>` or as the console script `manet-<tool>`. A tool's `main(argv)`
returns its exit status: 0 on success; 1 when the work ran but did not succeed (predict found
no readable input, compare found a difference); 2 when it cannot run as given: a malformed
command line (argparse's usage message) or a `ManetError` (a problem with the user's input,
printed as one `error:` line); 130 when Ctrl-C stopped it after it saved its work (`Interrupted`).
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from manet_jax.errors import Interrupted, ManetError

CONFIG_OVERRIDE = "--config."


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """An argument parser named as the tool was invoked: `manet-<tool>` or `python -m <module>`."""
    invoked = Path(sys.argv[0]).name
    prog = invoked if invoked.startswith("manet-") else f"python -m {module}"
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_option(parser_: argparse.ArgumentParser, required: bool = True) -> None:
    """`--config FILE` plus any number of `--config.KEY=VALUE` overrides (see `parse_with_overrides`)."""
    parser_.add_argument("--config", required=required, metavar="FILE",
                         help="config file, e.g. configs/raf.py; override its keys with --config.KEY=VALUE "
                              "(e.g. --config.learning_rate=0.02, --config.input.flip_prob=0)")


def parse_with_overrides(parser_: argparse.ArgumentParser, argv: Sequence[str] | None
                         ) -> tuple[argparse.Namespace, list[str]]:
    """(parsed options, ['KEY=VALUE', ...]) from `--config.KEY=VALUE` or `--config.KEY VALUE`."""
    args, rest = parser_.parse_known_args(argv)
    overrides, rest = [], list(rest)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith(CONFIG_OVERRIDE):
            parser_.error(f"unrecognized argument: {arg}")
        key = arg.removeprefix(CONFIG_OVERRIDE)
        if "=" not in key:
            if not rest:
                parser_.error(f"{arg} needs a value ({arg}=VALUE)")
            key = f"{key}={rest.pop(0)}"
        overrides.append(key)
    return args, overrides


def run(work: Callable[[], int | None]) -> int:
    """Runs a tool's work: its status (None is 0), or 2 with one `error:` line for a ManetError."""
    quiet_libtpu_without_tpus()
    try:
        return work() or 0
    except ManetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted:  # the work has logged what it saved
        return 130


GOOGLE_PCI_VENDOR = "0x1ae0"  # the PCI vendor of TPU chips (and of Compute Engine's gVNIC network card)


def quiet_libtpu_without_tpus(pci_devices: Path = Path("/sys/bus/pci/devices")) -> None:
    """With libtpu installed (the `tpu` extra), JAX looks for TPUs when it starts, and on a machine
    without any libtpu logs that it cannot tell the TPU's type and hosts. Tell it some there: it
    still finds no TPU, and JAX uses the other devices. Left alone: a JAX_PLATFORMS choice, TPU
    settings already set, and machines with a Google PCI device among `pci_devices`, TPU chips as
    JAX finds them (a Compute Engine VM's network card too: there libtpu's lines stay, rather than a
    new TPU's type going unrecognised)."""
    if os.environ.get("JAX_PLATFORMS") or any(_pci_vendor(path) == GOOGLE_PCI_VENDOR
                                              for path in pci_devices.glob("*/vendor")):
        return
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def _pci_vendor(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def start_runtime() -> None:
    """Start-up shared by the tools that run the model or read datasets: manet_jax logs progress
    at INFO (libraries at WARNING), and TensorFlow (tf.data, image decoding) stays off the
    accelerators, which belong to JAX."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s%(asctime)s %(message)s",
                        datefmt="%m%d %H:%M:%S", force=True)
    logging.getLogger("manet_jax").setLevel(logging.INFO)
    absl = logging.getLogger("absl")
    absl.setLevel(logging.ERROR)  # Orbax and TFDS log each file operation
    absl.addFilter(_not_from_orbax)
    sys.unraisablehook = _unraisable_unless_late_write
    import tensorflow as tf  # quiet already: manet_jax/__init__.py sets its log level

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices
        pass


def _not_from_orbax(record: logging.LogRecord) -> bool:
    """Drops Orbax's log records: it logs a failed checkpoint write with tracebacks from each of its
    threads (thousands of lines for a full disk), and the error reaches the tools, which report it
    in one line."""
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def _unraisable_unless_late_write(unraisable) -> None:
    """Python's report of an exception nothing could catch, except one per write that tensorstore
    completes after Orbax has given up on its failed checkpoint and closed the event loop it was
    to report to ('Event loop is closed'; hundreds for a full disk)."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)
