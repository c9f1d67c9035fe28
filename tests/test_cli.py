"""What the tools share: options, config overrides, exit statuses, console scripts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from manet_jax import cli
from manet_jax.errors import ConfigError
from train_helpers import command, run, trainer_setup


def test_config_overrides_in_both_spellings():
    parser = cli.parser("manet_jax.train", "test")
    cli.add_config_option(parser)
    parser.add_argument("--workdir")
    args, overrides = cli.parse_with_overrides(parser, [
        "--config", "configs/demo.py", "--config.learning_rate=0.1", "--workdir", "w", "--config.input.flip_prob", "0"])
    assert (args.config, args.workdir) == ("configs/demo.py", "w")
    assert overrides == ["learning_rate=0.1", "input.flip_prob=0"]


@pytest.mark.parametrize("argv, message", [(["--config", "c.py", "--batch_size=3"], "unrecognized argument: --batch_size=3"),
                                           (["--config", "c.py", "--config.seed"], "--config.seed needs a value")])
def test_bad_command_lines_are_usage_errors(argv, message, capsys):
    parser = cli.parser("manet_jax.train", "test")
    cli.add_config_option(parser)
    with pytest.raises(SystemExit) as e:
        cli.parse_with_overrides(parser, argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_user_errors_are_one_line_and_status_2_bugs_keep_their_traceback(capsys):
    def fails():
        raise ConfigError("config.seed must be >= 0")

    assert cli.run(fails) == 2
    assert capsys.readouterr().err == "error: config.seed must be >= 0\n"
    assert cli.run(lambda: None) == 0 and cli.run(lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda: 1 / 0)


# A tool's work signalling itself (argv: the case, the signal's number), run by `cli.run` in a process
# of its own: "code" from plain Python code; "gc" from a garbage-collection callback (where an
# exception raised by a handler is lost); "deferred" inside `cli.deferring_signals`, acted upon at a
# safe point after its `finally` ran; "twice" a second SIGINT inside it, which ends the process at once;
# "guard" the same inside the trainer's PreemptionGuard, which took the first.
SIGNALLED = """
import gc, os, signal, sys, time
from manet_jax import cli
case, signum = sys.argv[1], int(sys.argv[2])

def work():
    if case == "code":
        os.kill(os.getpid(), signum)
    elif case == "gc":
        def collected(phase, info):
            if phase == "start" and collected in gc.callbacks:
                gc.callbacks.remove(collected)
                os.kill(os.getpid(), signum)
                time.sleep(0.5)
        gc.callbacks.append(collected)
        gc.collect()
    elif case == "guard":
        from manet_jax.training.run import PreemptionGuard
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signum)
            time.sleep(0.5)
            assert guard.signal == signal.SIGINT
            os.kill(os.getpid(), signum)
            time.sleep(0.5)
    else:
        with cli.deferring_signals():
            try:
                for _ in range(case == "twice" and 2 or 1):
                    os.kill(os.getpid(), signum)
                    time.sleep(0.5)
                print("deferred", flush=True)
            finally:
                print("finally", flush=True)
        cli.check_signals()
    time.sleep(5)
    print("not stopped", flush=True)

sys.exit(cli.run(work))
"""


@pytest.mark.slow  # a process per case
@pytest.mark.parametrize("case, signum, stdout", [
    ("code", signal.SIGTERM, ""), ("code", signal.SIGINT, ""), ("gc", signal.SIGTERM, ""),
    ("deferred", signal.SIGTERM, "deferred\nfinally\n"), ("twice", signal.SIGINT, ""), ("guard", signal.SIGINT, "")])
def test_a_signal_ends_a_tool_in_one_line_with_its_status_wherever_it_arrives(case, signum, stdout):
    result = subprocess.run([sys.executable, "-c", SIGNALLED, case, str(int(signum))], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert (result.returncode, result.stderr, result.stdout) == (128 + signum, f"stopped by {signum.name}\n", stdout)


def test_the_tools_signal_handlers_are_put_back_after_their_work():
    before = {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    assert cli.run(lambda: None) == 0
    assert {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS} == before
    assert signal.set_wakeup_fd(wakeup) == wakeup


# A tool writing a file and a folder of files (a new folder beneath the output folder) through
# the storage layer when a signal ends it at once.
WRITING = """
import os, signal, sys, time
from pathlib import Path
from manet_jax import cli, storage
where = Path(sys.argv[1])

def work():
    outputs = [storage.output(where / "new" / "table.json"), storage.output(where / "model", folder=True)]
    with storage.writing(outputs) as (table, model):
        table.write_text("half")
        (model / "variables").write_bytes(bytes(1000))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    print("not stopped", flush=True)

sys.exit(cli.run(work, whole_process=True))
"""


@pytest.mark.slow  # a process
def test_a_signal_while_a_tool_writes_leaves_neither_its_outputs_nor_their_temporaries(tmp_path):
    result = subprocess.run([sys.executable, "-c", WRITING, str(tmp_path)], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert (result.returncode, result.stderr, result.stdout) == (143, "stopped by SIGTERM\n", "")
    assert list(tmp_path.iterdir()) == []


# A tool that is the whole process, as `python -m` or a console script runs it: after its work,
# an exit handler registered by the work (as JAX's and TensorFlow's are) runs; `case` says what the
# work returns or raises and whether a SIGTERM arrives in that handler; an object that the
# interpreter's teardown would collect prints when it is.
WHOLE_PROCESS = """
import atexit, os, signal, sys, time
from manet_jax import cli
case = sys.argv[1]

class Collected:
    def __del__(self):
        print("torn down", flush=True)

kept = Collected()

def late():
    print("exit handler", flush=True)
    if case == "signalled":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("not stopped", flush=True)
    elif case == "unwatched":  # as when the main thread holds the interpreter until the end
        signal.set_wakeup_fd(-1)
        os.kill(os.getpid(), signal.SIGTERM)

def work():
    atexit.register(late)
    print("done", end="")  # flushed at the end
    if case == "bug":
        raise RuntimeError("a bug")
    if case == "exited":  # as argparse's --help does
        sys.exit(0)
    return 3

sys.exit(cli.run(work, whole_process=True))
"""


@pytest.mark.slow  # a process per case
@pytest.mark.parametrize("case, status, stderr", [
    ("signalled", 143, "stopped by SIGTERM\n"), ("unwatched", 143, "stopped by SIGTERM\n"), ("returned", 3, ""),
    ("exited", 0, ""),
    ("bug", 1, "RuntimeError: a bug\n")])
def test_a_tool_that_is_the_whole_process_ends_in_one_line_on_a_signal_while_it_exits(case, status, stderr):
    """Without the interpreter's teardown, where a signal found Python's default handler (killed
    by SIGTERM, no line) for about a second after the work; the exit handlers still run."""
    result = subprocess.run([sys.executable, "-c", WHOLE_PROCESS, case], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == status, result.stderr
    assert result.stderr.endswith(stderr) and (case == "bug" or result.stderr == stderr)
    assert result.stdout == "doneexit handler\n"


# Imports every dependency that manet_jax names (what they set on import is theirs), then every
# manet_jax module, and prints what changed in between of os.environ, the signal handlers, the
# loggers' levels and handlers, and jax.config.
IMPORT_ALL = """
import ast, importlib, logging, os, pathlib, pkgutil, signal, sys
package = pathlib.Path(sys.argv[1])
names = set()
for path in package.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
for name in sorted(names):
    if name.split(".")[0] not in (*sys.stdlib_module_names, "manet_jax"):
        try:
            importlib.import_module(name)
        except ImportError:  # an optional dependency of an optional one
            pass
import jax

def state() -> dict:
    loggers = [("", logging.root), *logging.root.manager.loggerDict.items()]
    return {"environ": dict(os.environ),
            "signals": {int(s): repr(signal.getsignal(s)) for s in signal.valid_signals()
                        if s not in (signal.SIGKILL, signal.SIGSTOP)},
            "wakeup fd": {"fd": signal.set_wakeup_fd(signal.set_wakeup_fd(-1))},
            "loggers": {name: (logger.level, len(logger.handlers), logger.propagate) for name, logger in loggers
                        if isinstance(logger, logging.Logger)
                        and (logger.level or logger.handlers or not logger.propagate)},
            "jax.config": {key: repr(value) for key, value in jax.config.values.items()}}

before = state()
import manet_jax
for module in pkgutil.walk_packages(manet_jax.__path__, "manet_jax."):
    importlib.import_module(module.name)
after = state()
for kind in before:
    changed = {key: (before[kind].get(key), after[kind].get(key)) for key in before[kind].keys() | after[kind].keys()
               if before[kind].get(key) != after[kind].get(key)}
    if changed:
        print(kind, changed)
"""


@pytest.mark.slow  # a process importing everything
def test_importing_any_module_sets_nothing_process_wide():
    package = Path(cli.__file__).parent
    environ = {key: os.environ[key] for key in ("PATH", "HOME", "PYTHONPATH", "TMPDIR") if key in os.environ}
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL, str(package)], capture_output=True, text=True,
                            timeout=300, cwd=package.parent, env=environ)  # without what this process set
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""


# The trainer signals itself when it reaches a point of its start-up: the import of a module, or the
# opening of a file under a path (config.init_from's, read as the run's first state is made, once
# JAX's backend has loaded and the workdir's lease is taken).
SIGNAL_AT = """
import os, sys
at, signum, sent = sys.argv.pop(1), int(sys.argv.pop(1)), []
def send(event, args):
    reached = (event == "import" and args[0] == at) or (
        event == "open" and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]).startswith(at))
    if reached and not sent:
        sent.append(event)
        os.kill(os.getpid(), signum)
sys.addaudithook(send)
from manet_jax.train import main
sys.exit(main())
"""


@pytest.mark.slow  # trainer processes
@pytest.mark.parametrize("at, signum", [("tensorflow", signal.SIGINT), ("init_from", signal.SIGTERM)])
def test_a_signal_during_the_trainers_start_up_ends_it_in_one_line(tmp_path, at, signum):
    """SIGINT while TensorFlow loads (once a traceback of KeyboardInterrupt), SIGTERM while the run
    reads its first weights (once the C++ stack trace of the handler JAX's backend installs; now the
    run holds the workdir's lease then, and stops at its first safe point, after its progress line
    about those weights)."""
    setup = trainer_setup(tmp_path, tmp_path / "compilation_cache")
    workdir = tmp_path / "workdir"
    train = command(setup, workdir)
    assert train[1:3] == ["-m", "manet_jax.train"]
    at = str(setup["init_from"]) if at == "init_from" else at
    result = run([sys.executable, "-c", SIGNAL_AT, at, str(int(signum)), *train[3:]], setup["env"])
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    progress = re.compile(r"I\d{4} \d\d:\d\d:\d\d initialised from ")
    assert [line for line in result.stderr.splitlines() if not progress.match(line)] == [f"stopped by {signum.name}"]
    assert result.stdout == ""
    assert not (workdir / "lease.json").exists() and not list(workdir.glob("checkpoints/*"))


@pytest.mark.slow  # a process per tool
@pytest.mark.parametrize("tool", ["train", "evaluate", "predict", "serve", "export", "tpu_plan", "convert.__main__"])
def test_the_long_running_tools_load_no_jax_before_their_signal_handlers(tool):
    """What a tool imports before `cli.run` installs its handlers gets Python's defaults for a signal
    (killed by SIGTERM without a line): JAX alone takes a second or more to import on these CPUs."""
    code = f"import sys, manet_jax.{tool}; print(sorted({{'jax', 'tensorflow', 'torch'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout == "[]\n", result.stderr[-2000:]


@pytest.mark.slow  # a process per tool
@pytest.mark.parametrize("script", ["manet-train", "manet-evaluate", "manet-predict", "manet-export", "manet-convert",
                                    "manet-compare", "manet-benchmark", "manet-report", "manet-prepare",
                                    "manet-input-benchmark"])
def test_console_scripts(script):
    path = shutil.which(script)
    assert path, f"{script} is not installed: pip install -e ."
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {script} "), result.stderr[-2000:]


TPU_SETTINGS = ("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")


def pci_devices(root: Path, *vendors: str) -> Path:
    """A /sys/bus/pci/devices-like folder of devices with these vendor ids."""
    for i, vendor in enumerate(vendors):
        (root / f"0000:00:0{i}.0").mkdir(parents=True)
        (root / f"0000:00:0{i}.0" / "vendor").write_text(f"{vendor}\n")
    return root


@pytest.mark.parametrize("vendors, platforms, quieted", [
    (("0x8086", "0x1af4"), None, True),  # no TPU: libtpu is told of one, finds none, says nothing
    (("0x8086", "0x1ae0"), None, False),  # a Google device (TPU chips): left to libtpu
    (("0x8086",), "cpu", False),  # the user chose the platforms
])
def test_libtpu_is_quieted_only_where_no_tpu_can_be(tmp_path, monkeypatch, vendors, platforms, quieted):
    for name in TPU_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    if platforms:
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
    cli.quiet_libtpu_without_tpus(pci_devices(tmp_path, *vendors))
    assert ("TPU_ACCELERATOR_TYPE" in os.environ) == quieted
    assert ("TPU_WORKER_HOSTNAMES" in os.environ) == quieted
