"""A tool signalled at one moment of its run, and how it ended: shared by tests/test_signals.py (a
few moments per tool) and scripts/signal_sweep.py (many).

A moment is seconds after the start (`1.5`: the signal is sent from outside, as a scheduler
would); or `compile+S`: S seconds after the tool's first program is lowered, which is inside its
first compile (sent by the tool's own process, from a JAX monitoring listener, so that no load on
the machine moves it out of the compile); or `after:TEXT+S`: S seconds after the tool has printed
TEXT (`after:Serving on+1`, sent from outside). A try passes when the tool ends in one of the ways
`PASSING` names within `bound` seconds of the signal; a tool that writes (evaluate, export,
tpu_plan) writes into a new path, and a try that stops it passes only if no temporary is left
beside it (the output itself may be there, whole, when the signal came after it was moved into
place).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from manet_jax.convert import flax_to_torch, save_state_dict_file
from manet_jax.storage import TEMPORARY
from train_helpers import REPO, make_checkpoint, make_dataset, random_variables

DATASET = "synthetic_faces/64_32_20"
# Runs `python -m <module> ARGS...` after arming the `compile+S` moment (argv: module, signal, moment,
# a file to create when it sends the signal, args).
WRAPPER = """
import os, runpy, sys, threading
module, signum, moment, sent = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.argv = [module, *sys.argv[5:]]
if moment.startswith("compile+"):
    import jax.monitoring
    armed = []
    def send():
        open(sent, "w").close()
        os.kill(os.getpid(), signum)
    def lowered(event, seconds, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and not armed:
            armed.append(threading.Timer(float(moment.removeprefix("compile+")), send))
            armed[0].start()
    jax.monitoring.register_event_duration_secs_listener(lowered)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
MARKS_OF_A_BUG = ("Traceback", "Exception ignored", "Fatal Python error", "Segmentation fault", "core dumped",
                  "Check failed", "*** SIG")
PASSING = ("stopped", "served, then stopped", "checkpoint saved")


@dataclasses.dataclass
class Try:
    tool: str
    signal: str
    moment: str
    # One of PASSING, or: finished first, lost, hang, crash, bug output, default handler, left a temporary, other.
    outcome: str
    status: int | None  # the exit status (None: still running at the bound, then killed)
    exit_s: float | None  # seconds from the signal to the exit (from the start for `compile+` moments)
    last_line: str

    @property
    def passed(self) -> bool:
        return self.outcome in PASSING


def tools(root: Path) -> dict[str, list[str]]:
    """The long-running tools' command lines on a tiny dataset and a random 64x64 model under `root`
    (made here once): each compiles MA-Net before it is done."""
    data, bundle, weights = root / "data", root / "model", root / "weights.npz"
    if not weights.exists():
        make_dataset(data)
        make_checkpoint(bundle)
        save_state_dict_file(flax_to_torch(random_variables()), weights)
    fresh = "{fresh}"  # a new path per try
    settings = {"dataset": DATASET, "data_dir": data, "image_size": 64, "init_from": bundle, "num_epochs": 1,
                "batch_size": 8, "eval_batch_size": 8, "log_every_steps": 1}
    return {
        "train": ["manet_jax.train", "--config", "configs/demo.py", "--workdir", fresh,
                  *(f"--config.{key}={value}" for key, value in settings.items())],
        "evaluate": ["manet_jax.evaluate", "--checkpoint", str(bundle), "--dataset", DATASET, "--data-dir", str(data),
                     "--batch-size", "8", "--output-dir", fresh],
        "predict": ["manet_jax.predict", str(REPO / "docs" / "demo_face.png"), "--checkpoint", str(bundle),
                    "--batch-size", "8"],
        "serve": ["manet_jax.serve", "--checkpoint", str(bundle), "--port", "0", "--batch-size", "8"],
        "export": ["manet_jax.export", "--checkpoint", str(bundle), "--format", "stablehlo", "--platforms", "cpu",
                   "--output", fresh],
        "convert": ["manet_jax.convert", "inspect", str(weights), "--image-size", "64", "--max-images", "8"],
        "tpu_plan": ["manet_jax.tpu_plan", "--config", "configs/raf.py", "--topology", "v5litepod-4", "--steps", "eval",
                     "--config.image_size=64", "--config.eval_batch_size=32", "--output", f"{fresh}.json"],
    }


def environment() -> dict[str, str]:
    """The tools on the CPU, without a persistent compilation cache (so that their compiles are real)
    and without what this process set up."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("TF_", "JAX_", "TPU_", "OPENCV_", "EPATH_", "GCSFS_"))}
    return {**environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}


def signal_once(tool: str, command: list[str], signum: signal.Signals, moment: str, bound: float = 120) -> Try:
    """Runs `command` (a module and its arguments, `{fresh}` a new path), signals it at `moment` and
    tells how it ended."""
    with tempfile.TemporaryDirectory() as scratch:
        argv = [arg.replace("{fresh}", str(Path(scratch) / "out")) for arg in command]
        with open(Path(scratch) / "stdout", "w+") as out, open(Path(scratch) / "stderr", "w+") as err:
            marker = Path(scratch) / "sent"
            process = subprocess.Popen([sys.executable, "-c", WRAPPER, argv[0], str(int(signum)), moment, str(marker),
                                        *argv[1:]], cwd=REPO, env=environment(), stdout=out, stderr=err, text=True)
            start = time.monotonic()
            sent = start
            if not moment.startswith("compile+"):
                time.sleep(max(0.0, send_at(moment, start, process, Path(scratch), bound) - time.monotonic()))
                sent = time.monotonic()
                if process.poll() is None and not exiting(process.pid):
                    process.send_signal(signum)
                    marker.touch()
            try:
                status = process.wait(timeout=bound + sent - time.monotonic())
            except subprocess.TimeoutExpired:
                status = None
                process.kill()
                process.wait()
            exit_s = None if status is None else time.monotonic() - sent
            out.seek(0)
            err.seek(0)
            output, errors, signalled = out.read(), err.read(), marker.exists()
        left = [path.name for path in Path(scratch).rglob("*") if TEMPORARY.fullmatch(path.name)]
    lines = errors.strip().splitlines()
    last = lines[-1] if lines else ""
    found = outcome(tool, signum, status, output + errors, last) if signalled else "finished first"
    if found == "stopped" and left:
        found = "left a temporary"
    return Try(tool, signum.name, moment, found, status, exit_s, last)


def exiting(pid: int) -> bool:
    """Whether process `pid` has begun to exit (the kernel's PF_EXITING, set at `_exit`): it then
    ends as it chose, and a signal, though delivered while the kernel frees its memory (tens of
    milliseconds for a tool's gigabytes), changes nothing; such a try is one the tool finished first."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True
    return bool(int(fields[6]) & 0x4)  # the flags, after state, ppid, pgrp, session, tty_nr, tpgid


def send_at(moment: str, start: float, process: subprocess.Popen, scratch: Path, bound: float) -> float:
    """When (time.monotonic) to send the signal of a timed or `after:TEXT+S` moment; for the latter,
    waits (at most `bound`) until TEXT is in the output in `scratch` or the process has exited."""
    if not moment.startswith("after:"):
        return start + float(moment)
    text, _, delay = moment.removeprefix("after:").rpartition("+")
    while process.poll() is None and time.monotonic() < start + bound and not any(
            text in (scratch / name).read_text() for name in ("stdout", "stderr")):
        time.sleep(0.1)
    return time.monotonic() + float(delay)


def outcome(tool: str, signum: signal.Signals, status: int | None, output: str, last: str) -> str:
    """How a signalled tool ended, from its exit status (None: it did not), output and last line."""
    stopped_line = last == f"stopped by {signum.name}"
    if status is None:
        return "hang"
    if any(mark in output for mark in MARKS_OF_A_BUG):
        return "crash" if status < 0 and status != -signum else "bug output"
    if status == 128 + signum and stopped_line:
        return "stopped"
    if tool == "serve" and status == 0 and stopped_line and "Serving on" in output:
        return "served, then stopped"
    if tool == "train" and status == (0 if signum == signal.SIGTERM else 130) and (
            "preempted at step" in output or "interrupted (Ctrl-C) at step" in output):
        return "checkpoint saved"
    if status == -signum:
        return "default handler"
    if status < 0:
        return "crash"
    return "lost" if status == 0 else "other"
