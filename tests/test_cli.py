"""What the tools share: options, config overrides, exit statuses, console scripts."""

from __future__ import annotations

import shutil
import subprocess

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
