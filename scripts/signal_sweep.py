"""Signals each long-running tool at many moments of its start-up and tells how each try ended.

        python scripts/signal_sweep.py [--tools train,serve] [--moments 20] [--window 30] [--jobs 2]
                                       [--only-after] [--output docs/benchmarks/signals_DATE.json]

Per tool, --moments tries: four inside the first compile (0.05, 0.3, 1 and 3 s after the first
program is lowered, sent by the tool's own process), the rest sent from outside at evenly spaced
seconds after the start, up to --window; and for the server two more once it serves (`AFTER`;
--only-after: those alone; the trainer's stops once training has begun are tests/test_train.py's
and tests/test_train_stops.py's). SIGTERM and SIGINT alternate. The tools run on the CPU on
a tiny dataset and a random 64x64 model, without a compilation cache, one process per try
(`tests/signal_tries.py`, which tests/test_signals.py also uses). A try passes when the tool ends
with `stopped by SIG...` as its last line and status 143 or 130, or a server that was serving
stops with 0, or the trainer saves a checkpoint once training has begun; one that finished before
the signal counts for neither. Prints a Markdown table of the tries and outcomes per tool, writes
every try as JSON, and exits with 1 if any try failed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from signal_tries import PASSING, Try, signal_once, tools  # noqa: E402  (tests/, what the test runs)

COMPILE_MOMENTS = ("compile+0.05", "compile+0.3", "compile+1", "compile+3")
AFTER = {"serve": ("after:Serving on+0.5", "after:Serving on+2")}


def moments(tool: str, count: int, window: float, only_after: bool) -> list[str]:
    timed = count - len(COMPILE_MOMENTS)
    before = [*COMPILE_MOMENTS, *(f"{window * (i + 1) / timed:.2f}" for i in range(timed))]
    return [*([] if only_after else before), *AFTER.get(tool, ())]


def table(tries: list[Try]) -> str:
    by_tool = collections.defaultdict(list)
    for attempt in tries:
        by_tool[attempt.tool].append(attempt)
    rows = ["| tool | tries | passed | finished first | failed | outcomes | slowest exit after the signal (s) |",
            "|---|---|---|---|---|---|---|"]
    for tool, attempts in by_tool.items():
        counts = collections.Counter(a.outcome for a in attempts)
        exits = [a.exit_s for a in attempts if a.passed and not a.moment.startswith("compile+")]
        failed = [a for a in attempts if not a.passed and a.outcome != "finished first"]
        slowest = f"{max(exits):.2f}" if exits else "-"
        rows.append(f"| {tool} | {len(attempts)} | {sum(a.passed for a in attempts)} | {counts['finished first']} | "
                    f"{len(failed)} | {', '.join(f'{name} {n}' for name, n in counts.most_common())} | {slowest} |")
    return "\n".join(rows)


def machine() -> str:
    """The CPU's model and cores, and the load on them when the sweep started."""
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return f"{models[0] if models else platform.processor()} x {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", help="comma-separated tools (default: all)")
    parser.add_argument("--moments", type=int, default=20, help="tries per tool (%(default)s)")
    parser.add_argument("--window", type=float, default=30.0, help="latest timed moment, in seconds (%(default)s)")
    parser.add_argument("--bound", type=float, default=300.0, help="seconds a try may take after its signal")
    parser.add_argument("--jobs", type=int, default=1, help="tries run at once (%(default)s)")
    parser.add_argument("--only-after", action="store_true", help="only the moments once serving")
    parser.add_argument("--output", type=Path, help="write the tries as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        commands = tools(Path(root))
        chosen = args.tools.split(",") if args.tools else list(commands)
        plan = [(tool, signal.SIGTERM if i % 2 == 0 else signal.SIGINT, moment) for tool in chosen
                for i, moment in enumerate(moments(tool, args.moments, args.window, args.only_after))]

        def one(entry: tuple[str, signal.Signals, str]) -> Try:
            attempt = signal_once(entry[0], commands[entry[0]], entry[1], entry[2], args.bound)
            print(f"{attempt.tool} {attempt.signal} at {attempt.moment}: {attempt.outcome} (status {attempt.status}, "
                  f"{attempt.last_line!r})", file=sys.stderr, flush=True)
            return attempt

        with ThreadPoolExecutor(args.jobs) as pool:
            tries = list(pool.map(one, plan))
    print(table(tries))
    if args.output:
        args.output.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "machine": machine(),
            "python": platform.python_version(), "versions": {name: version(name) for name in ("jax", "jaxlib")},
            "moments": args.moments, "only_after": args.only_after, "window_s": args.window, "bound_s": args.bound,
            "jobs": args.jobs,
            "passing": PASSING, "tries": [dataclasses.asdict(t) for t in tries]}, indent=1) + "\n")
    return int(any(not t.passed and t.outcome != "finished first" for t in tries))


if __name__ == "__main__":
    sys.exit(main())
