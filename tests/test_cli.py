"""What the tools share: options, config overrides, exit statuses, console scripts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
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


def test_a_signal_stops_a_tool_with_one_line_and_its_status_and_the_handlers_are_put_back(capsys):
    def signalled(signum: int):
        def work() -> None:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler runs in the main thread at the next instruction
            raise AssertionError(f"{signum} did not stop the work")
        return work

    before = {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS}
    for signum, status in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
        with pytest.raises(SystemExit) as stopped:
            cli.run(signalled(signum))
        assert stopped.value.code == status
        assert capsys.readouterr().err == f"stopped by {signal.Signals(signum).name}\n"
        assert {s: signal.getsignal(s) for s in cli.STOP_SIGNALS} == before


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
    reads its first weights (once the C++ stack trace of the handler JAX's backend installs)."""
    setup = trainer_setup(tmp_path, tmp_path / "compilation_cache")
    workdir = tmp_path / "workdir"
    train = command(setup, workdir)
    assert train[1:3] == ["-m", "manet_jax.train"]
    at = str(setup["init_from"]) if at == "init_from" else at
    result = run([sys.executable, "-c", SIGNAL_AT, at, str(int(signum)), *train[3:]], setup["env"])
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    assert result.stderr == f"stopped by {signum.name}\n" and result.stdout == ""
    assert not (workdir / "lease.json").exists() and not list(workdir.glob("checkpoints/*"))


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
