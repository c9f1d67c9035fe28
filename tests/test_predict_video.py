"""predict on videos and cameras: frame sampling, the IoU tracker, per-track smoothing, and the
command line on small clips written with OpenCV (scikit-image's astronaut face moving across a grey
background, then a gap without a face, then the face again), a fake camera, annotated videos and
timelines.

A random 7-class model at 64x64 (train_helpers.make_checkpoint); one predictor for the module.
"""

from __future__ import annotations

import csv
import json
import os
import signal

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from manet_jax import predict
from manet_jax.bundle import load_bundle
from manet_jax.inference import clips as video_clips
from manet_jax.inference.clips import predict_video
from manet_jax.inference.detectors import get_detector
from manet_jax.inference.faces import Box
from manet_jax.inference.predictor import Predictor
from manet_jax.inference.records import NO_FACE, OK, Record, format_table, write_records
from manet_jax.inference.tracking import Smoother, Tracker
from manet_jax.inference.video import VideoError, VideoSource, open_camera, open_video
from manet_jax.inference.visualize import TIMELINE_TRACK_HEIGHT, TIMELINE_WIDTH
from train_helpers import make_checkpoint

BATCH = 4
FPS = 10
WIDTH, HEIGHT = 320, 240
FACE_FRAMES = [*range(0, 8), *range(15, 24)]  # the face is in view in these frames; 8-14 are the gap
FRAMES = 24
FIRST_TRACK = range(0, 8)


def clip_frames() -> list[np.ndarray]:
    """RGB frames: the astronaut's face moving right 8 pixels a frame, gone for frames 8-14, back."""
    face = data.astronaut()[30:200, 150:300]
    frames = []
    for i in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        if i in FACE_FRAMES:
            x = 10 + 8 * (i % 15)
            frame[50:220, x:x + 150] = face
        frames.append(frame)
    return frames


def write_clip(path, frames, codec) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), FPS, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


class FakeCapture:
    """A camera (cv2.VideoCapture's methods) yielding `frames`, then failing a read, or raising
    KeyboardInterrupt (Ctrl-C) at frame `interrupt_at`."""

    def __init__(self, frames, opened=True, interrupt_at=None, fps=0.0):
        self.frames, self.opened, self.interrupt_at, self.fps = frames, opened, interrupt_at, fps
        self.index, self.released = -1, False

    def isOpened(self):
        return self.opened

    def grab(self):
        self.index += 1
        if self.index == self.interrupt_at:
            raise KeyboardInterrupt
        return self.index < len(self.frames)

    def retrieve(self):
        return True, cv2.cvtColor(self.frames[self.index], cv2.COLOR_RGB2BGR)

    def get(self, prop):
        assert prop == cv2.CAP_PROP_FPS
        return self.fps

    def release(self):
        self.released = True


class FakeClock:
    """A clock that advances `step` seconds each time it is read."""

    def __init__(self, step):
        self.step, self.now = step, 100.0

    def __call__(self):
        self.now += self.step
        return self.now


def blank(n):
    return [np.full((8, 8, 3), i, np.uint8) for i in range(n)]


def test_sampling_every_and_fps():
    source = VideoSource("clip", FakeCapture(blank(10)), fps=10.0)
    assert [(f.index, f.time_s) for f in source.frames(every=3)] == [(0, 0.0), (3, 0.3), (6, 0.6), (9, 0.9)]
    assert source.capture.released
    source = VideoSource("clip", FakeCapture(blank(10)), fps=10.0)
    assert [f.index for f in source.frames(fps=4)] == [0, 3, 5, 8]  # at or after 0, 0.25, 0.5, 0.75 s
    frames = list(VideoSource("clip", FakeCapture(blank(4)), fps=25.0).frames())
    assert [f.index for f in frames] == [0, 1, 2, 3] and [f.pixels[0, 0, 0] for f in frames] == [0, 1, 2, 3]


def test_camera_times_come_from_its_clock():
    camera = open_camera(0, lambda index: FakeCapture(blank(9)), clock=FakeClock(0.1))
    assert camera.name == "camera 0" and camera.fps == 30.0  # reports no rate: the default
    frames = list(camera.frames(fps=4))  # times 0, 0.1, ... 0.8
    assert [f.index for f in frames] == [0, 3, 5, 8]
    np.testing.assert_allclose([f.time_s for f in frames], [0, 0.3, 0.5, 0.8])


def test_tracker_keeps_ids_while_faces_overlap():
    tracker = Tracker()
    a, b = Box(0, 0, 100, 100), Box(200, 0, 100, 100)
    assert tracker.update([a, b]) == [0, 1]
    assert tracker.update([Box(210, 5, 100, 100), Box(10, 0, 100, 100)]) == [1, 0]  # order follows the boxes
    assert tracker.update([Box(20, 0, 100, 100)]) == [0]  # track 1 missed once: still alive
    assert tracker.update([Box(30, 0, 100, 100), Box(215, 0, 100, 100)]) == [0, 1]
    assert tracker.update([]) == [] and tracker.update([]) == []
    assert tracker.update([Box(30, 0, 100, 100)]) == [2]  # missed twice: a new track
    assert tracker.update([Box(500, 0, 50, 50)]) == [3]  # no overlap: a new track


def test_smoother_averages_the_last_k_per_track():
    smoother = Smoother(2)
    p = [{"fused": {"a": v, "b": 1 - v}} for v in (0.2, 0.4, 0.9)]
    assert smoother(0, p[0]) == {"fused": {"a": 0.2, "b": 0.8}}
    assert smoother(1, p[2]) == p[2]  # another track
    assert smoother(0, p[1])["fused"]["a"] == pytest.approx(0.3)
    assert smoother(0, p[2])["fused"] == pytest.approx({"a": 0.65, "b": 0.35})


def test_video_fields_only_in_video_outputs(tmp_path):
    """frame, time_s and track are written for videos; image outputs keep their fields."""
    image, video = Record("a.png", NO_FACE), Record("a.mp4", NO_FACE, frame=3, time_s=0.3)
    assert format_table([image], ["x"]).splitlines()[1].split() == ["a.png", "no", "face"]
    assert format_table([video], ["x"]).splitlines()[1].split() == ["a.mp4", "3", "0.300", "no", "face"]
    for records, fields in (([image], []), ([video], ["frame", "time_s", "track"])):
        write_records(tmp_path / "out.csv", records, ["x"])
        header = next(csv.reader((tmp_path / "out.csv").open()))
        assert header == ["file", "status", "message", *fields, "face", "x", "y", "width", "height", "label",
                          "fused_x", "visualization"]
        write_records(tmp_path / "out.json", records, ["x"])
        row, = json.loads((tmp_path / "out.json").read_text())
        assert [key for key in ("frame", "time_s", "track") if key in row] == fields
    assert row["frame"] == 3 and row["time_s"] == 0.3 and row["track"] is None


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    frames = clip_frames()
    write_clip(d / "clip.mp4", frames, "mp4v")
    write_clip(d / "clip.avi", frames, "MJPG")
    (d / "broken.mp4").write_bytes((d / "clip.mp4").read_bytes()[:2000])
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def exit_status(argv):
    try:
        return predict.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv, message", [
    (["{clips}/broken.mp4"], "error: {clips}/broken.mp4: cannot be read as a video"),
    (["{clips}/missing.mkv"], "error: {clips}/missing.mkv: no such video file"),
    (["--camera", "97"], "error: --camera 97: camera 97 cannot be opened"),
    (["{clips}/clip.mp4", "x.png"], "images, video files and --camera cannot be mixed"),
    (["x.png", "--smooth", "3"], "--smooth applies to video files and --camera only"),
    (["{clips}/clip.mp4", "--every", "2", "--fps", "3"], "not allowed with argument --every"),
    (["{clips}/clip.mp4", "--annotate", "out.gif"], "--annotate out.gif: use a .mp4 or .avi"),
    (["{clips}/clip.mp4", "--timeline", "nowhere/t.png"], "--timeline nowhere/t.png: its folder does not exist"),
    (["{clips}/clip.mp4", "--visualize", "vis"], "--visualize applies to images only"),
    (["{clips}/clip.mp4", "--boxes", "boxes.json"], "--boxes applies to images only")])
def test_cli_errors(clips, tmp_path, capfd, argv, message):
    """Each is reported before the model would load (there is none at --checkpoint)."""
    assert exit_status([a.format(clips=clips) for a in argv] + ["--checkpoint", str(tmp_path / "none")]) == 2
    err = capfd.readouterr().err
    assert message.format(clips=clips) in err
    if "error: " in message:  # one line, without OpenCV's or FFmpeg's messages
        line, = err.strip().splitlines()
        assert line.startswith(message.format(clips=clips))


def test_a_video_that_ends_before_its_declared_frames_says_so(tmp_path):
    clip = tmp_path / "clip.avi"
    write_clip(clip, clip_frames(), "MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[:clip.stat().st_size // 2])  # the header still declares every frame
    whole, half = open_video(str(clip)), open_video(str(cut))
    assert len(list(whole.frames())) == FRAMES and whole.ended_early() is None
    read = len(list(half.frames()))
    assert 0 < read < FRAMES and half.declared_frames == FRAMES
    assert half.ended_early() == (f"{cut}: the video ends after {read} of the {FRAMES} frames its header declares "
                                  "(truncated or damaged); rows are given for the frames read")


def test_a_camera_that_does_not_open():
    with pytest.raises(VideoError, match="--camera 3: camera 3 cannot be opened"):
        open_camera(3, lambda index: FakeCapture([], opened=False))


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(load_bundle(checkpoint), BATCH)


@pytest.fixture(scope="module")
def every_frame(clips, predictor):
    return predict_video(open_video(str(clips / "clip.mp4")), predictor, detect_faces=get_detector("cascade"))


def probabilities(record):
    return list(record.probabilities["fused"].values())


@pytest.mark.slow  # the predictor compiled (module fixture)
def test_rows_frames_times_and_tracks(every_frame, clips, predictor):
    records = every_frame.records
    assert every_frame.frames == FRAMES and not every_frame.interrupted
    assert [r.frame for r in records] == list(range(FRAMES))  # one face or one `no face` row a frame
    assert [r.status for r in records] == [OK if i in FACE_FRAMES else NO_FACE for i in range(FRAMES)]
    assert [r.time_s for r in records] == [i / FPS for i in range(FRAMES)]
    assert [r.track for r in records] == [0 if i in FIRST_TRACK else 1 if i in FACE_FRAMES else None
                                         for i in range(FRAMES)]
    assert {r.file for r in records} == {str(clips / "clip.mp4")}
    avi = predict_video(open_video(str(clips / "clip.avi")), predictor,
                        detect_faces=get_detector("cascade")).records  # MJPEG: the same faces
    assert [(r.frame, r.status, r.track) for r in avi] == [(r.frame, r.status, r.track) for r in records]
    for record in records:
        if record.status == OK:
            fused = record.probabilities["fused"]
            assert abs(sum(fused.values()) - 1) < 1e-5 and record.label == max(fused, key=fused.get)
            assert record.box.x < 10 + 8 * (record.frame % 15) + 75 < record.box.x + record.box.width  # the face


@pytest.mark.slow  # the predictor compiled (module fixture)
@pytest.mark.parametrize("option, frames", [(["--every", "3"], range(0, FRAMES, 3)),
                                            (["--fps", "4"], [0, 3, 5, 8, 10, 13, 15, 18, 20, 23])])
def test_cli_sampling(clips, checkpoint, predictor, every_frame, tmp_path, capsys, option, frames):
    """The sampled frames' rows are the every-frame run's rows (the same decoded pixels)."""
    out = tmp_path / "out.csv"
    assert predict.main([str(clips / "clip.mp4"), "--checkpoint", str(checkpoint), "--batch-size", str(BATCH),
                         "--output", str(out)] + option) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:7] == ["file", "status", "message", "frame", "time_s", "track", "face"]
    assert [int(r["frame"]) for r in rows] == list(frames)
    reference = {r.frame: r for r in every_frame.records}
    for row in rows:
        expected = reference[int(row["frame"])]
        assert (row["status"], float(row["time_s"]), row["track"]) == (
            expected.status, expected.time_s, "" if expected.track is None else str(expected.track))
        if expected.status == OK:
            np.testing.assert_allclose([float(row[f"fused_{n}"]) for n in predictor.spec.class_names],
                                       probabilities(expected), atol=1e-6)
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    faces = sum(f in FACE_FRAMES for f in frames)
    assert summary.startswith(f"{len(frames)} frames from 1 source(s): {faces} face(s) in {faces} frame(s), "
                              f"{len(frames) - faces} without a face, 2 track(s); ")
    assert summary.endswith(" frames/s") and float(summary.split()[-2]) > 0


@pytest.mark.slow  # the predictor compiled (module fixture)
def test_ctrl_c_on_a_video_writes_the_frames_read(clips, checkpoint, every_frame, tmp_path, monkeypatch):
    """Ctrl-C (a real SIGINT, under the command line's signal handlers) while the sixth frame is
    read: the five read before are predicted and written, and the status is 130."""
    read_video = video_clips.predict_video

    def interrupted_at_the_sixth_frame(source, predictor, **options):
        frames = source.frames

        def sampled(every, fps):
            for n, frame in enumerate(frames(every, fps)):
                if n == 5:
                    os.kill(os.getpid(), signal.SIGINT)
                yield frame
        source.frames = sampled
        return read_video(source, predictor, **options)

    monkeypatch.setattr(video_clips, "predict_video", interrupted_at_the_sixth_frame)
    out = tmp_path / "out.csv"
    assert exit_status([str(clips / "clip.mp4"), "--checkpoint", str(checkpoint), "--batch-size", str(BATCH),
                        "--output", str(out)]) == 130
    rows = list(csv.DictReader(out.open()))
    assert [(int(r["frame"]), r["status"]) for r in rows] == [(r.frame, r.status) for r in every_frame.records[:5]]


@pytest.mark.slow  # the predictor compiled (module fixture)
def test_smoothing_annotate_and_timeline(clips, checkpoint, every_frame, tmp_path):
    out, annotated, timeline = tmp_path / "out.json", tmp_path / "annotated.avi", tmp_path / "timeline.png"
    assert predict.main([str(clips / "clip.mp4"), "--checkpoint", str(checkpoint), "--batch-size", str(BATCH),
                         "--smooth", "3", "--output", str(out), "--annotate", str(annotated),
                         "--timeline", str(timeline)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["frame"], r["track"]) for r in rows] == [(r.frame, r.track) for r in every_frame.records]
    history, changes = {}, []
    for row, plain in zip(rows, every_frame.records):
        if plain.status != OK:
            continue
        history.setdefault(plain.track, []).append(probabilities(plain))
        smoothed = list(row["probabilities"]["fused"].values())
        np.testing.assert_allclose(smoothed, np.mean(history[plain.track][-3:], axis=0), atol=1e-6)
        assert row["label"] == max(row["probabilities"]["fused"], key=row["probabilities"]["fused"].get)
        changes.append(np.abs(np.subtract(smoothed, probabilities(plain))).max())
    assert changes[0] == pytest.approx(0, abs=1e-6) and max(changes) > 1e-4  # a track's first face is its own

    capture = cv2.VideoCapture(str(annotated))
    assert capture.get(cv2.CAP_PROP_FPS) == FPS and capture.get(cv2.CAP_PROP_FRAME_COUNT) == FRAMES
    drawn = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(FRAMES)]
    capture.release()
    for frame, row, original in zip(drawn, rows, clip_frames()):
        if row["status"] == OK:  # the middle of the box's top edge is magenta, the background grey
            box = row["box"]
            assert np.abs(frame[box["y"], box["x"] + box["width"] // 2].astype(int) - [255, 0, 255]).max() < 60
        else:
            assert np.abs(frame.astype(int) - original).max() < 40  # nothing drawn
    with Image.open(timeline) as image:
        assert (image.format, image.size) == ("PNG", (TIMELINE_WIDTH, 2 * TIMELINE_TRACK_HEIGHT))
        colours = {tuple(c) for c in np.asarray(image.convert("RGB")).reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # the first two classes' lines


@pytest.mark.slow  # the predictor compiled (module fixture)
def test_camera_until_ctrl_c(predictor, every_frame):
    """A fake camera of the clip's frames, stopped by Ctrl-C at its 20th frame: the 20 frames read
    are all predicted, with the clock's times, and the capture is released."""
    capture = FakeCapture(clip_frames(), interrupt_at=20)
    result = predict_video(open_camera(0, lambda index: capture, clock=FakeClock(0.5)), predictor, every=2,
                           detect_faces=get_detector("cascade"))
    assert result.interrupted and result.frames == 10 and capture.released
    records = result.records
    assert [r.frame for r in records] == list(range(0, 20, 2)) and {r.file for r in records} == {"camera 0"}
    assert [r.time_s for r in records] == [0.5 * i for i in range(0, 20, 2)]
    reference = {r.frame: r for r in every_frame.records}
    assert [r.status for r in records] == [reference[r.frame].status for r in records]
    assert [r.track for r in records] == [0, 0, 0, 0, None, None, None, None, 1, 1]
    for record in records:
        if record.status == OK:  # the camera's frames are the uncompressed ones: close to the mp4's
            np.testing.assert_allclose(probabilities(record), probabilities(reference[record.frame]), atol=0.05)
