"""What every command-line tool shares: its parser, config overrides, start-up and how it fails.

Tools take GNU-style options (`--batch-size 32` or `--batch-size=32`) and run as
`python -m manet_jax.<tool>` or as the console script `manet-<tool>`. A tool's `main(argv)`
returns its exit status: 0 on success; 1 when the work ran but did not succeed (predict found
no readable input, compare found a difference); 2 when it cannot run as given: a malformed
command line (argparse's usage message) or a `ManetError` (a problem with the user's input,
printed as one `error:` line); 130 when Ctrl-C stopped it after it saved its work (`Interrupted`).
Any other exception is a bug and keeps its traceback.

A tool's `main` hands its work to `run` (most parse their command line first), which first sets what
is process-wide (`start_runtime`; importing manet_jax sets nothing). From then on (before it,
Python's own start and the tool's first imports keep Python's defaults) to the process's exit,
SIGTERM and SIGINT end it, at any moment (while JAX and TensorFlow load, a dataset builds, XLA
compiles, the process exits), with the one line `stopped by SIGTERM` (or SIGINT) and status 143 (or
130), without tearing the interpreter down under running compiles (`stop_on_signals`). Work with
something to save or finish defers them (`deferring_signals`) and acts at its safe points: the
trainer checkpoints at its next step (`training.run.PreemptionGuard`), the server stops taking
requests and exits with 0, predict stops reading a video between frames and writes what it read.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from manet_jax.errors import Interrupted, ManetError, Stopped

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


def run(work: Callable[[], int | None], whole_process: bool = False) -> int:
    """Runs a tool's work after the one start of what is process-wide (`start_runtime`): its status
    (None is 0), or 2 with one `error:` line for a ManetError, or 128 + the signal with one line for
    SIGTERM or SIGINT acted upon at a safe point (`errors.Stopped`). The signal handlers are put back
    afterwards, for callers that go on (tests call tools' `main` in their process), unless the tool
    is the `whole_process` (its `main` got no argv: a console script or `python -m`): then they stay
    to the end and the process ends once the exit handlers have run (`end_after_exit_handlers`),
    so that a signal while it exits still ends it in one line with 128 + the signal."""
    restore = start_runtime()
    if whole_process:
        end_after_exit_handlers()
    try:
        status = work() or 0
    except ManetError as e:
        print(f"error: {e}", file=sys.stderr)
        status = 2
    except Interrupted:  # the work has logged what it saved
        status = 130
    except Stopped as e:
        print(f"stopped by {e.signal.name}", file=sys.stderr)
        status = 128 + e.signal
    except SystemExit as e:  # argparse's --help or usage error, for a tool that parses inside its work
        _ending[:] = [e.code if isinstance(e.code, int) else 0 if e.code is None else 1]
        raise
    finally:
        if not whole_process:
            restore()
    _ending[:] = [status]
    return status


_ending: list[int] = []  # the whole process's status, once its work has returned one
_exiting = threading.Lock()  # taken by whichever ends the process first: a signal or the end of the work


def end_after_exit_handlers() -> None:
    """Ends the process after the exit handlers registered from now on (JAX's, TensorFlow's: `atexit`
    runs the latest first) with the status its work returned or exited with (1 after an uncaught
    exception), without the interpreter's teardown: for about a second after the work, Python's
    finalisation and the native libraries' destructors run where no signal handler can act, and a
    signal would kill the process by default instead of ending it in one line."""
    _ending.clear()

    def end() -> None:
        _exiting.acquire()  # for good: a signal's `exit_at_once` under way ends the process with its status
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                stream.flush()
        if _undeferred:  # one the watcher or Python's handler took, which then waited for `_exiting`
            _stop(_undeferred[0])
        os._exit(_ending[0] if _ending else 1)

    atexit.register(end)


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


def start_runtime() -> Callable[[], None]:
    """The tools' one start of what is process-wide, before their work (`run`); returns what puts the
    signal handlers back. Sets, where the user has not: TensorFlow's and FFmpeg's log levels and
    oneDNN off (TensorFlow logs at import on CPUs with AVX-512 that its oneDNN operations are on,
    before its log level applies; the input pipeline uses none it speeds up), `gs://` paths through
    gcsfs (`storage.configure`) and libtpu quiet (`quiet_libtpu_without_tpus`); manet_jax logs
    progress at INFO, libraries at WARNING; and, first, SIGTERM and SIGINT as `stop_on_signals` says."""
    restore = stop_on_signals()
    from manet_jax import storage  # etils epath takes a second to import: after the handlers

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # FFmpeg's own messages ("moov atom not found") quiet (AV_LOG_QUIET): a video that cannot be read
    # is reported as a VideoError. OpenCV reads this at its first use of FFmpeg.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    storage.configure()
    quiet_libtpu_without_tpus()
    logging.basicConfig(level=logging.WARNING, format="%(levelname).1s%(asctime)s %(message)s",
                        datefmt="%m%d %H:%M:%S", force=True)
    logging.getLogger("manet_jax").setLevel(logging.INFO)
    # Orbax and TFDS log each file operation, and Orbax a failed checkpoint write with tracebacks from
    # each of its threads: the tools report what goes wrong as errors, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    # gcsfs logs each request it gives up on with its traceback; the tools report the error in one line.
    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    return restore


def start_tensorflow() -> None:
    """Imports TensorFlow (tf.data, image decoding) off the accelerators, which belong to JAX: its one
    setting that cannot be made before it loads. Tools call it before they read data or images."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices
        pass


# SIGTERM and SIGINT while a tool runs. The handler only records the signal. A thread that the
# signal wakes (`signal.set_wakeup_fd`), also while the main thread waits in native code (XLA
# compiling, TensorFlow loading), ends the process at once unless the work is `deferring_signals`:
# one line, flushed, and `os._exit`, so that no interpreter is torn down under running compiles.
_received: list[signal.Signals] = []  # since `stop_on_signals`, oldest first
_undeferred: list[signal.Signals] = []  # those of them that arrived outside `deferring_signals`
_deferring = 0  # depth of `deferring_signals` blocks
_interrupts_deferred = 0  # SIGINTs the watcher saw in the outermost `deferring_signals` block
_wakeup: list[int] = []  # the read and write ends of the watcher's pipe, once made


def stop_on_signals() -> Callable[[], None]:
    """Until the returned function is called: SIGTERM and SIGINT end the process with one line,
    `stopped by SIGTERM` (or SIGINT), and status 128 + the signal (143, 130), at any moment, even
    inside a compile; inside `deferring_signals` they are recorded instead, for the work to act upon
    at its safe points (`check_signals`, `received_signal`), except that a second SIGINT (Ctrl-C
    again) still ends it at once. A signal that is ignored (SIGINT in a background job) stays
    ignored. Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if not _wakeup:
        _wakeup.extend(os.pipe())
        os.set_blocking(_wakeup[1], False)
        threading.Thread(target=_watch, args=(_wakeup[0],), name="manet_jax signals", daemon=True).start()
    _received.clear()
    _undeferred.clear()
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, _record)
    previous_fd = signal.set_wakeup_fd(_wakeup[1], warn_on_full_buffer=False)

    def restore() -> None:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    return restore


@contextlib.contextmanager
def deferring_signals() -> Iterator[None]:
    """A block of work with something to save or finish (a lease held, a server's requests): SIGTERM
    and SIGINT are only recorded (`received_signal`, `check_signals`), or taken by handlers the block
    installs (the trainer's `PreemptionGuard`); a second SIGINT ends the process at once."""
    global _deferring, _interrupts_deferred
    if not _deferring:
        _interrupts_deferred = 0
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def received_signal() -> signal.Signals | None:
    """The first SIGTERM or SIGINT the handler recorded since the tool started, if any."""
    return _received[0] if _received else None


def check_signals() -> None:
    """A safe point: raises `errors.Stopped` once a signal has been recorded (`deferring_signals`)."""
    if _received:
        raise Stopped(_received[0])


def exit_at_once(signum: int) -> NoReturn:
    """Ends the process with `stopped by <signal>` and status 128 + `signum`, without tearing the
    interpreter down (threads compiling or loading end with it); what was printed is flushed first,
    and what was being written is removed (`storage.abandon_writes`)."""
    _exiting.acquire()  # for good; if the work's end took it first, that ends the process
    _stop(signum)


def _stop(signum: int) -> NoReturn:
    """`exit_at_once`'s end, by whichever holds `_exiting`."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            stream.flush()
    storage = sys.modules.get("manet_jax.storage")  # imported by then if anything was written through it
    if storage is not None:
        with contextlib.suppress(Exception):
            storage.abandon_writes()
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), f"stopped by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def _record(signum: int, frame) -> None:
    _received.append(signal.Signals(signum))
    if not _deferring:  # the watcher ends the process; if it cannot run in time, the work's end does
        _undeferred.append(signal.Signals(signum))


def _watch(wakeup: int) -> None:
    """The watcher thread: ends the process on each SIGTERM or SIGINT the work does not defer."""
    global _interrupts_deferred
    while True:
        for signum in os.read(wakeup, 64):
            if signum not in STOP_SIGNALS:
                continue
            if not _deferring or signum == signal.SIGINT and _interrupts_deferred:
                _undeferred.append(signal.Signals(signum))  # for the work's end, if it holds `_exiting`
                exit_at_once(signum)
            _interrupts_deferred += signum == signal.SIGINT
