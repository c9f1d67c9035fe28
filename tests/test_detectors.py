"""predict's face finding besides the cascade: --detector mtcnn and the boxes of --boxes FILE."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from manet_jax import predict
from manet_jax.inference import detectors
from manet_jax.inference.boxes import BoxesFile, BoxesFileError
from manet_jax.inference.detectors import DetectorError, get_detector
from manet_jax.inference.faces import Box

ASTRONAUT_FACE = Box(180, 64, 88, 100)  # by eye, as scripts/benchmark_detectors.py labels it


def iou(a: Box, b: Box) -> float:
    w = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    h = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    return w * h / (a.width * a.height + b.width * b.height - w * h)


BOXES = [{"file": "photos/a.png", "x": 10, "y": 20, "width": 30, "height": 40},
         {"file": "b.jpg", "x": 1.6, "y": 0, "width": 5, "height": 6},
         {"file": "photos/a.png", "x": 0, "y": 0, "width": 8, "height": 9}]


@pytest.fixture(params=["json", "csv"])
def boxes_file(request, tmp_path):
    path = tmp_path / f"boxes.{request.param}"
    if request.param == "json":
        path.write_text(json.dumps(BOXES, indent=1))
    else:
        path.write_text("file,x,y,width,height\n" + "".join(
            f"{b['file']},{b['x']},{b['y']},{b['width']},{b['height']}\n" for b in BOXES))
    return BoxesFile(path)


def test_boxes_file_matches_by_path_then_by_name(boxes_file, tmp_path):
    a = [Box(10, 20, 30, 40), Box(0, 0, 8, 9)]
    assert boxes_file.boxes_for(Path("photos/a.png")) == a  # the path as given
    assert boxes_file.boxes_for(Path("photos/../photos/a.png").resolve()) == a  # the same file
    assert boxes_file.boxes_for(Path("elsewhere/a.png")) == a  # by name
    assert boxes_file.boxes_for(Path("x/y/b.jpg")) == [Box(2, 0, 5, 6)]  # rounded
    assert boxes_file.boxes_for(Path("c.png")) == []


@pytest.mark.parametrize("suffix, text, message", [
    (".json", '[{"file": "a.png", "x": 1, "y": 2, "width": 3, "height": 4},\n {"file": "a.png", "x": 1}]',
     "line 2: each face needs file, x, y, width, height"),
    (".json", '[\n{"file": "a.png", "x": 1, "y": 2, "width": 3, "height": 4}\n{"file"',
     "line 3: not valid JSON"),
    (".json", '\n{"file": "a.png"}', "line 2: expected a JSON list"),
    (".json", '[\n\n{"file": "a.png", "x": 1, "y": "two", "width": 3, "height": 4}]',
     "line 3: x, y, width and height must be numbers; got 1, 'two', 3, 4"),
    (".json", '[{"file": 7, "x": 1, "y": 2, "width": 3, "height": 4}]', "line 1: file must be a path"),
    (".csv", "file,x,y,width,height\na.png,1,2,3,4\na.png,1,2,0,4\n",
     "line 3: 1,2,0,4: x and y must be at least 0, width and height at least 1"),
    (".csv", "file,x,y,w,h\na.png,1,2,3,4\n", "line 1: the header lacks the column(s) width, height"),
    (".csv", "file,x,y,width,height\na.png,1,2,3,nan\n", "line 2: x, y, width and height must be numbers"),
])
def test_malformed_boxes_files_are_reported_with_their_line(tmp_path, suffix, text, message):
    path = tmp_path / f"boxes{suffix}"
    path.write_text(text)
    with pytest.raises(BoxesFileError, match=f"^--boxes {path}: ") as caught:
        BoxesFile(path)
    assert message in str(caught.value)


def test_cli_reports_a_malformed_boxes_file(tmp_path, capsys):
    path = tmp_path / "boxes.csv"
    path.write_text("file,x,y,width,height\na.png,1,2,3\n")
    try:
        status = predict.main(["a.png", "--checkpoint", str(tmp_path), "--boxes", str(path)])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == [f"error: --boxes {path}: line 2: each face needs file, x, y, width, height; got "
                                   "{'file': 'a.png', 'x': '1', 'y': '2', 'width': '3', 'height': None}"]


def test_unknown_and_missing_detectors(monkeypatch):
    with pytest.raises(DetectorError, match="--detector yolo: unknown; choose one of cascade, mtcnn"):
        get_detector("yolo")
    monkeypatch.setitem(sys.modules, "mtcnn", None)  # as if not installed: importing it raises ImportError
    detectors._mtcnn.cache_clear()
    with pytest.raises(DetectorError, match=r"pip install 'manet-jax\[mtcnn\]'"):
        get_detector("mtcnn")
    detectors._mtcnn.cache_clear()


def test_cascade_detector_is_the_cascade():
    faces = get_detector("cascade", min_neighbors=5)(data.astronaut())
    assert len(faces) == 1 and iou(faces[0], ASTRONAUT_FACE) >= 0.5


@pytest.mark.slow  # loads TensorFlow's MTCNN
def test_mtcnn_finds_the_astronauts_and_the_cameramans_face():
    pytest.importorskip("mtcnn", reason="the mtcnn extra is not installed: pip install 'manet-jax[mtcnn]'")
    detect = get_detector("mtcnn")
    faces = detect(data.astronaut())
    assert len(faces) == 1 and iou(faces[0], ASTRONAUT_FACE) >= 0.5
    camera = detect(np.asarray(Image.fromarray(data.camera()).convert("RGB")))  # the cascade misses this one
    assert len(camera) == 1 and iou(camera[0], Box(196, 114, 60, 82)) >= 0.5
    assert detect(data.coffee()) == []
