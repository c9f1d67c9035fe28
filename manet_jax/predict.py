"""Facial expression prediction on image and video files: `python -m manet_jax.predict PATH... --checkpoint DIR`.

Finds faces (OpenCV's frontal-face cascade, or --detector mtcnn) and crops each with a margin, or
crops the boxes of --boxes; faces with landmarks (MTCNN's, or in --boxes) are aligned onto the
model's face template instead where it has one (--align, --no-align); preprocesses each face as
the evaluation pipeline does and runs MA-Net in batches; prints a table, optionally writes JSON or
CSV (--output) and a PNG per face with attention maps (--visualize). Exits with 1 only if no
input could be processed. Video files (by extension) and --camera N give a row per face per
sampled frame, with the frame, its time and the face's track. With `--runtime onnx` the faces go
through ONNX Runtime instead of XLA, --checkpoint being an ONNX export (`python -m
manet_jax.export --format onnx`), which has no attention maps.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from manet_jax import cli
from manet_jax.inference.boxes import BoxesFile
from manet_jax.inference.detectors import LANDMARK_DETECTORS, Detector, get_detector
from manet_jax.inference.face_options import add_face_options, check_face_options
from manet_jax.inference.records import BRANCHES, ERROR, NO_FACE, OK, WRITERS, format_table, write_records
from manet_jax.inference.video import (VIDEO_SUFFIXES, WRITER_CODECS, VideoSource, is_video_file, open_camera,
                                       open_video)

if TYPE_CHECKING:  # the model's modules load JAX and TensorFlow: once the tool has started (`cli.run`)
    from manet_jax.bundle import FaceTemplate
    from manet_jax.inference.onnx_runtime import OnnxPredictor
    from manet_jax.inference.predictor import Predictor


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("manet_jax.predict", __doc__)
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help=f"image file, folder (searched recursively) or glob; or video files "
                             f"({', '.join(VIDEO_SUFFIXES)})")
    add_face_options(parser, batch_size=32)
    parser.add_argument("--no-detect", action="store_true", help="take each image as an aligned face crop")
    parser.add_argument("--boxes", type=Path, metavar="FILE",
                        help="crop these face boxes instead of detecting: JSON or CSV of file, x, y, width, height")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the results to this .json or .csv file")
    parser.add_argument("--branch-probabilities", action="store_true",
                        help="also write the local and global branches' probabilities to --output")
    parser.add_argument("--visualize", type=Path, metavar="DIR", help="write a PNG per face into DIR")
    video = parser.add_argument_group("videos and cameras")
    video.add_argument("--camera", type=int, metavar="N", help="read camera N (as cv2.VideoCapture(N)) until Ctrl-C")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=int, default=1, metavar="N", help="take every Nth frame (%(default)s)")
    sampling.add_argument("--fps", type=float, metavar="F", help="take F frames a second")
    video.add_argument("--smooth", type=int, default=1, metavar="K",
                       help="average each face's probabilities over its track's last K frames (%(default)s)")
    video.add_argument("--annotate", type=Path, metavar="FILE",
                       help="write the sampled frames with boxes and labels to this .mp4 or .avi file")
    video.add_argument("--timeline", type=Path, metavar="FILE", help="plot each track's probabilities over time (PNG)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_face_options(parser, args, ("--every", args.every, 1), ("--smooth", args.smooth, 1))
    if args.boxes and args.no_detect:
        parser.error("--boxes and --no-detect: choose one")
    if args.output and args.output.suffix.lower() not in WRITERS:
        parser.error(f"--output {args.output}: unknown format; use a .json or .csv file name")
    if args.output and not args.output.absolute().parent.is_dir():
        parser.error(f"--output {args.output}: its folder does not exist")
    check_video_options(parser, args)
    if args.runtime == "onnx" and args.visualize:
        parser.error("--visualize: an ONNX export has no attention maps; use --runtime xla")
    return cli.run(lambda: predict(args), whole_process=argv is None)


def check_video_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Videos (or --camera) and images are not mixed, and the video options come with videos."""
    videos = [is_video_file(path) for path in args.paths]
    if args.camera is None and not args.paths:
        parser.error("give image or video PATHs, or --camera N")
    if args.camera is not None and args.paths or 0 < sum(videos) < len(videos):
        parser.error("images, video files and --camera cannot be mixed: run them separately")
    if args.camera is None and not any(videos):
        given = [option for option, value in (("--every", args.every != 1), ("--fps", args.fps), ("--smooth",
                 args.smooth != 1), ("--annotate", args.annotate), ("--timeline", args.timeline)) if value]
        if given:
            parser.error(f"{given[0]} applies to video files and --camera only")
    elif args.visualize:
        parser.error("--visualize applies to images only; use --annotate or --timeline for videos")
    elif args.boxes:
        parser.error("--boxes applies to images only")
    elif (args.annotate or args.timeline) and len(args.paths) > 1:
        parser.error("--annotate and --timeline take one video")
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps {args.fps}: must be positive")
    if args.annotate and args.annotate.suffix.lower() not in WRITER_CODECS:
        parser.error(f"--annotate {args.annotate}: use a .mp4 or .avi file name")
    for option, path in (("--annotate", args.annotate), ("--timeline", args.timeline)):
        if path and not path.absolute().parent.is_dir():
            parser.error(f"{option} {path}: its folder does not exist")


OUTPUT_OPTIONS = ("output", "visualize", "annotate", "timeline")  # what predict writes; --visualize a folder


def holds_pictures_only(folder: epath.Path) -> bool:
    """Whether `folder` holds nothing but PNG files: an earlier --visualize, which a run replaces."""
    return all(path.suffix.lower() == ".png" and path.is_file() for path in folder.iterdir())


def predict(args: argparse.Namespace) -> int:
    boxes = BoxesFile(args.boxes) if args.boxes else None
    from manet_jax import storage

    outputs = {name: storage.output(getattr(args, name), f"--{name}", folder=name == "visualize",
                                    ours=holds_pictures_only if name == "visualize" else None)
               for name in OUTPUT_OPTIONS if getattr(args, name)}
    storage.check_outputs(list(outputs.values()))  # before the model loads
    cli.start_tensorflow()
    from manet_jax.bundle import load_bundle
    from manet_jax.inference.alignment import choose_template
    from manet_jax.inference.onnx_runtime import OnnxPredictor
    from manet_jax.inference.predictor import Predictor
    from manet_jax.inference.quantize import runtime_note

    sources = [open_camera(args.camera)] if args.camera is not None else [open_video(p) for p in args.paths
                                                                           if is_video_file(p)]
    if args.runtime == "onnx":
        predictor = OnnxPredictor(Path(args.checkpoint), args.batch_size)
        print(f"{args.checkpoint}: {runtime_note(predictor.precision)}", file=sys.stderr)
    else:
        bundle = load_bundle(args.checkpoint).resized(args.image_size, "--image-size")
        predictor = Predictor(bundle, args.batch_size, maps=args.visualize is not None)
    landmarks = not args.no_detect and (boxes.has_landmarks if boxes else args.detector in LANDMARK_DETECTORS)
    template = choose_template(args.align, landmarks, predictor.spec)
    warm_up(predictor)  # before anything is written: a signal while it compiles ends predict at once
    with cli.deferring_signals(), storage.writing(list(outputs.values())) as temporaries:
        written = {name: Path(temporary) for name, temporary in zip(outputs, temporaries)}
        if sources:
            return predict_videos(args, sources, predictor, template, written)
        return predict_images(args, boxes, predictor, template, written)


def predict_images(args: argparse.Namespace, boxes: BoxesFile | None, predictor: Predictor | OnnxPredictor,
                   template: FaceTemplate | None, written: dict[str, Path]) -> int:
    """Runs the images, faces aligned onto `template` if given, prints the table and the rate, and
    writes the outputs to the temporary siblings `written` (by OUTPUT_OPTIONS' name). SIGTERM or
    SIGINT stops it between images, writing nothing (`errors.Stopped`)."""
    from manet_jax.inference.photos import predict_paths

    start = time.perf_counter()
    records = predict_paths(args.paths, predictor, detect_faces=face_detector(args), margin=args.margin,
                            boxes=boxes, template=template, visualize=written.get("visualize"),
                            visualize_as=args.visualize, stop=cli.check_signals)
    seconds = time.perf_counter() - start
    class_names = predictor.spec.class_names
    print(format_table(records, class_names))
    if args.output:
        write_records(written["output"], records, class_names, BRANCHES if args.branch_probabilities else BRANCHES[:1])
    statuses = {r.file: r.status for r in records}
    counts = Counter(statuses.values())
    faces = sum(r.status == OK for r in records)
    print(f"{len(statuses)} inputs: {faces} face(s) in {counts[OK]} image(s), {counts[NO_FACE]} without a face, "
          f"{counts[ERROR]} skipped; {faces / seconds:.1f} faces/s", file=sys.stderr)
    return 0 if counts[OK] or counts[NO_FACE] else 1


def warm_up(predictor: Predictor | OnnxPredictor) -> None:
    """Compiles the forward on a blank face, so that faces/s and frames/s are the steady rates."""
    size = predictor.spec.image_size
    predictor(np.zeros((1, size, size, 3), np.float32))


def face_detector(args: argparse.Namespace) -> Detector | None:
    """The detector of --detector and --min-neighbors; none with --no-detect or --boxes."""
    return None if args.no_detect or args.boxes else get_detector(args.detector, args.min_neighbors)


def predict_videos(args: argparse.Namespace, sources: list[VideoSource], predictor: Predictor | OnnxPredictor,
                   template: FaceTemplate | None, written: dict[str, Path]) -> int:
    """Runs the videos (or the camera) in turn, faces aligned onto `template` if given, then prints
    what was collected and writes it to the temporary siblings `written`, also after SIGINT (Ctrl-C)
    or SIGTERM, which end the reading between frames (exit status 0 after Ctrl-C on a camera, where
    it is how it ends; else 128 + the signal). The forward has compiled before the first frame is
    read, so frames/s is the steady rate."""
    from manet_jax.inference import clips
    from manet_jax.inference.visualize import save_timeline

    detect_faces = face_detector(args)
    records, frames, start = [], 0, time.perf_counter()
    for source in sources:
        result = clips.predict_video(source, predictor, every=args.every, fps=args.fps, detect_faces=detect_faces,
                                     margin=args.margin, template=template, smooth=args.smooth,
                                     annotate=written.get("annotate"), stop=lambda: cli.received_signal() is not None)
        records += result.records
        frames += result.frames
        if result.interrupted:
            stopped_by = "Ctrl-C" if cli.received_signal() == signal.SIGINT else "SIGTERM"
            print(f"{source.name}: stopped by {stopped_by} after {result.frames} sampled frames", file=sys.stderr)
            break
        if message := source.ended_early():
            print(message, file=sys.stderr)
    seconds = time.perf_counter() - start
    class_names = predictor.spec.class_names
    print(format_table(records, class_names))
    if args.output:
        write_records(written["output"], records, class_names, BRANCHES if args.branch_probabilities else BRANCHES[:1])
    if args.timeline:
        save_timeline(written["timeline"], records, class_names)
    faces = [r for r in records if r.status == OK]
    print(f"{frames} frames from {len(sources)} source(s): {len(faces)} face(s) in "
          f"{len({(r.file, r.frame) for r in faces})} frame(s), {sum(r.status == NO_FACE for r in records)} "
          f"without a face, {len({(r.file, r.track) for r in faces})} track(s); {frames / seconds:.1f} frames/s",
          file=sys.stderr)
    signum = cli.received_signal()
    return 0 if signum is None or signum == signal.SIGINT and args.camera is not None else 128 + signum


if __name__ == "__main__":
    sys.exit(main())
