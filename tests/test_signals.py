"""Each long-running tool signalled inside its first compile (the moment at which the interpreter
once tore down under XLA's compiling threads: lost signals, hangs, SIGSEGV) ends in one line with
143 or 130. One try per tool here; scripts/signal_sweep.py tries many moments of each
(docs/benchmarks/README.md has its table)."""

from __future__ import annotations

import signal

import pytest

from signal_tries import signal_once, tools

pytestmark = pytest.mark.slow  # a tool process per test

BOUND = 120  # seconds from the signal to the exit, generous for a loaded 2-core machine (measured well under 1 s)


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> dict[str, list[str]]:
    return tools(tmp_path_factory.mktemp("signals"))


@pytest.mark.parametrize("tool, signum", [
    ("train", signal.SIGTERM), ("evaluate", signal.SIGINT), ("predict", signal.SIGTERM), ("serve", signal.SIGINT),
    ("export", signal.SIGTERM), ("convert", signal.SIGINT), ("tpu_plan", signal.SIGTERM)])
def test_a_signal_inside_the_first_compile_ends_the_tool_in_one_line(commands, tool, signum):
    attempt = signal_once(tool, commands[tool], signum, "compile+0.1", BOUND)
    assert attempt.outcome == "stopped", attempt
