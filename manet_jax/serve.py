"""Prediction over HTTP: `python -m manet_jax.serve --checkpoint DIR [--host 127.0.0.1] [--port 8000]`.

Serves `GET /health`, `POST /predict` (an image as the body, `Content-Type: image/*`, or as the
multipart field `image`; answers predict's JSON records) and `GET /`, a page to upload a photo and
see its faces, labels and attention maps; faces are cropped or aligned as predict does them. The
model is compiled before the server starts; requests are handled by --threads threads and run the
model one at a time. With `--runtime onnx` the faces go through ONNX Runtime instead of XLA,
--checkpoint being an ONNX export (`python -m manet_jax.export --format onnx`), which has no
attention maps: the same records, no pictures. Needs the `serve` extra (`pip install -e '.[serve]'`).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from manet_jax import cli
from manet_jax.errors import ManetError
from manet_jax.inference.detectors import LANDMARK_DETECTORS, get_detector
from manet_jax.inference.face_options import add_face_options, check_face_options

POLL_S = 0.5  # seconds between checks for SIGTERM and SIGINT while serving

MAX_BYTES = 20 * 2**20  # the largest request body accepted by default
MAX_PIXELS = 50_000_000  # the most pixels an upload may decode to by default: about 200 MB decoded


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.serve", __doc__)
    add_face_options(parser, batch_size=8)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (%(default)s: this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                        help="largest request body accepted, in bytes (%(default)s)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="most pixels an image may decode to (width x height; a large JPEG decodes at a "
                             "reduced scale), checked from its header (%(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="threads handling requests (%(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_face_options(parser, args, ("--port", args.port, 0), ("--max-bytes", args.max_bytes, 1),
                       ("--max-pixels", args.max_pixels, 1), ("--threads", args.threads, 1))
    return cli.run(lambda: serve(args), whole_process=argv is None)


def serve(args: argparse.Namespace) -> int:
    check_address(args.host, args.port)  # before the imports, the model's loading and its compiling
    try:  # the serve extra; the application's module (it loads JAX) once TensorFlow has started
        importlib.import_module("flask")
        import waitress
    except ImportError as e:
        raise ManetError(f"the server needs the serve extra ({e}): pip install -e '.[serve]'") from None
    cli.start_tensorflow()
    from manet_jax.bundle import load_bundle  # the model's modules load JAX: once the tool has started
    from manet_jax.inference.alignment import choose_template
    from manet_jax.inference.onnx_runtime import OnnxPredictor
    from manet_jax.inference.predictor import Predictor
    from manet_jax.inference.quantize import runtime_note
    from manet_jax.inference.server import create_app, warm_up

    detect_faces = get_detector(args.detector, args.min_neighbors)  # once: a missing package is an error now
    if args.runtime == "onnx":
        predictor = OnnxPredictor(Path(args.checkpoint), args.batch_size)
        print(f"{args.checkpoint}: {runtime_note(predictor.precision)}", file=sys.stderr)
    else:
        bundle = load_bundle(args.checkpoint).resized(args.image_size, "--image-size")
        predictor = Predictor(bundle, args.batch_size, maps=True)
    template = choose_template(args.align, args.detector in LANDMARK_DETECTORS, predictor.spec)
    warm_up(predictor)
    app = create_app(predictor, maps=args.runtime == "xla", detect_faces=detect_faces, margin=args.margin,
                     template=template, max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    if trim := _malloc_trim():  # glibc keeps a decoded image's freed memory otherwise: the RSS stays at its peak
        app.teardown_request(lambda _error: trim(0))
    logging.getLogger("waitress").setLevel(logging.INFO)  # its "Serving on http://..." line
    # Requests wait for the one model anyway: a queue of them (their bodies buffered on disk by
    # waitress) is how the server works under load, not a warning per request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    sockets: dict = {}  # waitress's map of the server's sockets, which `_serve` polls
    try:
        server = waitress.create_server(app, map=sockets, host=args.host, port=args.port, threads=args.threads)
    except OSError as e:  # taken since check_address
        raise address_error(args.host, args.port, e) from None
    server.print_listen("Serving on http://{}:{}")
    _serve(server, sockets)
    return 0


def _serve(server, sockets: dict) -> None:
    """Serves until SIGTERM or SIGINT, checked between polls of the sockets (every POLL_S); then stops
    taking requests, lets those being handled finish (waitress's shutdown) and says so in one line.
    Ctrl-C again stops at once."""
    from waitress import wasyncore

    with cli.deferring_signals():
        while (signum := cli.received_signal()) is None:
            wasyncore.loop(timeout=POLL_S, map=sockets, count=1)
        server.task_dispatcher.shutdown()
        wasyncore.close_all(sockets)
    print(f"stopped by {signum.name}", file=sys.stderr)


def check_address(host: str, port: int) -> None:
    """Raises `address_error` where waitress could not listen on host:port now (it is in use, or
    the host is not this machine's), binding as waitress does (SO_REUSEADDR)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise address_error(host, port, e) from None


def address_error(host: str, port: int, error: OSError) -> ManetError:
    return ManetError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, which hands the heap's free memory back to the system; None elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return None


if __name__ == "__main__":
    sys.exit(main())
