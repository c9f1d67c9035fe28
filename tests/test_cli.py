"""What the tools share: options, config overrides, exit statuses, console scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from manet_jax import cli
from manet_jax.errors import ConfigError


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
