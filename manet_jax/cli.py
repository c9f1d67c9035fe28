"""What every command-line tool shares: its parser, config overrides, start-up and how it fails.

Tools take GNU-style options (`--batch-size 32` or `--batch-size=32`) and run as
`python -m manet_jax.<tool>` or as the console script `manet-<tool>`. A tool's `main(argv)`
returns its exit status: 0 on success; 1 when the work ran but did not succeed (predict found
no readable input, compare found a difference); 2 when it cannot run as given: a malformed
command line (argparse's usage message) or a `ManetError` (a problem with the user's input,
printed as one `error:` line); 130 when Ctrl-C stopped it after it saved its work (`Interrupted`).
SIGTERM or SIGINT before a tool takes them over (while JAX and TensorFlow load, a dataset builds)
ends it with one line and status 143 or 130.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from manet_jax import storage
from manet_jax.errors import Interrupted, ManetError

CONFIG_OVERRIDE = "--config."
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    """Runs a tool's work: its status (None is 0), or 2 with one `error:` line for a ManetError;
    SIGTERM and SIGINT stop it quietly (`stop_quietly_on_signals`) until it returns. `gs://` paths
    go through gcsfs (`storage.configure`)."""
    quiet_libtpu_without_tpus()
    storage.configure()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    stop_quietly_on_signals()
    try:
        return work() or 0
    except ManetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted:  # the work has logged what it saved
        return 130
    finally:  # for callers that go on (tests call tools' `main` in their process)
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


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
    # Orbax and TFDS log each file operation, and Orbax a failed checkpoint write with tracebacks from
    # each of its threads: the tools report what goes wrong as errors, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    # gcsfs logs each request it gives up on with its traceback; the tools report the error in one line.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    import tensorflow as tf  # quiet already: manet_jax/__init__.py sets its log level

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices
        pass
    stop_quietly_on_signals()  # again: importing TensorFlow may have installed its own handlers


def stop_quietly_on_signals() -> None:
    """Until a tool installs its own handlers (the trainer's `PreemptionGuard`), SIGTERM and SIGINT
    end it with one line and status 128 + the signal's number (143, 130), rather than with a
    Python traceback or the C++ stack trace of the handler a native library (libtpu, ...) installs
    as it loads. Call again once such a library is loaded. A signal that is ignored (SIGINT in a
    background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _stop)


def _stop(signum: int, frame) -> None:
    print(f"stopped by {signal.Signals(signum).name}", file=sys.stderr)
    raise SystemExit(128 + signum)
