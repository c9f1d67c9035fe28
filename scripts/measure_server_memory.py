"""Measures the prediction server's memory: its resident size (RSS) at rest, after 20 of the largest
uploads it accepts one after another, and after 16 of them at once.

        python scripts/measure_server_memory.py [--pixels N] [--output docs/benchmarks/server_memory_DATE.json]

Starts `python -m manet_jax.serve` (a MA-Net of zero weights at 224x224, 7 classes) on a free port
of 127.0.0.1, waits for it to compile, and uploads a PNG of --pixels pixels (default: the server's
--max-pixels; a grey canvas with scikit-image's astronaut enlarged in its middle, so that a face is
found and the model runs). "At rest" is after one upload of the 512x512 astronaut. Also checks
that an upload one row over the limit is refused, and counts waitress's queue warnings. Prints a
Markdown table and writes it all as JSON. Every request loop is bounded; the server is stopped at
the end, also on failure.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

REPO = Path(__file__).resolve().parents[1]
SEQUENTIAL, CONCURRENT = 20, 16
START_TIMEOUT, REQUEST_TIMEOUT, SETTLE_S = 600, 600, 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, object]:
    """(status, decoded JSON answer) of POSTing a PNG."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def png(width: int, height: int) -> bytes:
    """A grey width x height PNG with the astronaut, enlarged to fit (at most 4x), in its middle."""
    face = Image.fromarray(data.astronaut())
    side = min(4 * face.width, width, height)
    canvas = Image.new("RGB", (width, height), (120, 130, 140))
    canvas.paste(face.resize((side, side), Image.Resampling.BILINEAR), ((width - side) // 2, (height - side) // 2))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident size now (VmRSS) and its peak so far (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: round(int(fields[name].split()[0]) / 1024, 1) for key, name in (("rss", "VmRSS"), ("peak", "VmHWM"))}


def start_server(checkpoint: Path, port: int, log: Path) -> subprocess.Popen:
    """The server, once its /health answers; fails with its output if it exits or stays silent."""
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "manet_jax.serve", "--checkpoint", str(checkpoint),
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return process
        except OSError:
            time.sleep(1)
    process.kill()
    raise SystemExit(f"the server did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def measure(checkpoint: Path, pixels: int, root: Path) -> dict:
    side = math.isqrt(pixels)
    width, height = side, pixels // side  # the largest image of this shape under the limit
    largest, over = png(width, height), png(width, height + 1)
    small = png(512, 512)
    port, log = free_port(), root / "server.log"
    url = f"http://127.0.0.1:{port}/predict"
    process = start_server(checkpoint, port, log)
    try:
        phases = {}

        def phase(name: str, bodies: list[bytes], workers: int) -> None:
            start = time.monotonic()
            with ThreadPoolExecutor(workers) as pool:
                statuses = [status for status, _ in pool.map(lambda body: post(url, body), bodies)]
            seconds = time.monotonic() - start
            time.sleep(SETTLE_S)
            phases[name] = {"requests": len(bodies), "statuses": sorted(set(statuses)),
                            "seconds": round(seconds, 1), **rss_mb(process.pid)}
            print(f"{name}: {phases[name]}", flush=True)

        phases["started"] = rss_mb(process.pid)
        phase("rest", [small], 1)
        phase("sequential", [largest] * SEQUENTIAL, 1)
        phase("concurrent", [largest] * CONCURRENT, CONCURRENT)
        over_status, over_answer = post(url, over)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    output = log.read_text()
    return {"image": {"width": width, "height": height, "png_bytes": len(largest)},
            "over_limit": {"width": width, "height": height + 1, "status": over_status,
                           "error": over_answer.get("error") if isinstance(over_answer, dict) else None},
            "phases": phases, "queue_warnings": output.count("Task queue depth")}


def markdown(result: dict) -> str:
    image, phases = result["image"], result["phases"]
    lines = ["| | requests | answers | seconds | RSS after (MiB) | peak RSS so far (MiB) |", "|---|---|---|---|---|---|",
             f"| started, compiled | | | | {phases['started']['rss']:,.0f} | {phases['started']['peak']:,.0f} |"]
    names = {"rest": "at rest (after one 512x512 upload)",
             "sequential": f"{SEQUENTIAL} uploads of {image['width']}x{image['height']}, one at a time",
             "concurrent": f"{CONCURRENT} of them at once"}
    for key, name in names.items():
        p = phases[key]
        lines.append(f"| {name} | {p['requests']} | {', '.join(map(str, p['statuses']))} | {p['seconds']} | "
                     f"{p['rss']:,.0f} | {p['peak']:,.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=int, help="pixels of the uploads (default: the server's --max-pixels)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from manet_jax.cli import quiet_libtpu_without_tpus

    quiet_libtpu_without_tpus()  # before JAX starts, as the tools do
    import jax

    from manet_jax.benchmark import cpu_model
    from manet_jax.bundle import ModelSpec, default_class_names, save_bundle
    from manet_jax.models import variable_shapes

    if args.pixels is None:
        from manet_jax.serve import MAX_PIXELS
        args.pixels = MAX_PIXELS
    with tempfile.TemporaryDirectory(prefix="manet-server-memory-") as root:
        variables = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), variable_shapes(7))
        checkpoint = save_bundle(Path(root, "model"), variables, ModelSpec(default_class_names(7),
                                                                           source="zero weights"))
        result = measure(Path(checkpoint), args.pixels, Path(root))
    table = markdown(result)
    print(table)
    print(f"over the limit: {result['over_limit']['status']} {result['over_limit']['error']}; "
          f"waitress queue warnings: {result['queue_warnings']}")
    if args.output:
        environment = {"processor": cpu_model(), "cpu_cores": os.cpu_count(),
                       "python": platform.python_version(),
                       **{name: version(name) for name in ("jax", "jaxlib", "pillow", "flask", "waitress")}}
        args.output.write_text(json.dumps({"date": datetime.date.today().isoformat(), "pixels": args.pixels,
                                           "environment": environment, **result, "markdown": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
