"""Faces aligned onto a face template: the similarity fit against Umeyama's (scikit-image), warps
that put marked points on the template, the choice of --align/--no-align, the template through a
bundle, an export's metadata and the trainer's config; on real faces (MTCNN on scikit-image's
astronaut, slow): the landmarks of aligned crops of the rotated, scaled and shifted photo detected
again on the template, the template tool on a fabricated dataset of known geometry, and predict,
the server and the video path aligning as one.
"""

from __future__ import annotations

import dataclasses
import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data, transform

import data_fixtures as fx
from manet_jax import face_template, predict
from manet_jax.bundle import BundleError, FaceTemplate, ModelSpec, load_bundle, read_face_template
from manet_jax.inference.alignment import DEFAULT_TEMPLATE, AlignmentError, align_face, choose_template, similarity
from manet_jax.inference.boxes import BoxesFile, BoxesFileError
from manet_jax.inference.faces import Box
from manet_jax.inference.onnx_runtime import read_spec
from manet_jax.inference.stablehlo import write_metadata
from manet_jax.training.config import load_config, model_spec
from train_helpers import REPO, make_checkpoint

SIZE = 100  # the template's errors are in pixels at RAF-DB's 100x100
MODEL_SIZE, BATCH = 32, 4  # the smallest input MA-Net takes: the quickest compile
TEMPLATE = FaceTemplate(((0.34, 0.46), (0.66, 0.46), (0.5, 0.64), (0.37, 0.8), (0.63, 0.8)), "test template")


def test_the_fit_is_umeyamas_least_squares_similarity():
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(100, 300, (5, 2))
    points = rng.uniform(20, 80, (5, 2))
    umeyama = transform.SimilarityTransform.from_estimate(landmarks, points)  # the closed form
    matrix = similarity(landmarks, points)  # Levenberg-Marquardt's, to its tolerance
    np.testing.assert_allclose(landmarks @ matrix[:, :2].T + matrix[:, 2], umeyama(landmarks), atol=1e-4)
    assert np.abs(landmarks @ matrix[:, :2].T + matrix[:, 2] - points).max() > 1  # points no similarity meets


@pytest.mark.parametrize("angle, scale", [(0, 1.0), (25, 0.8), (-40, 0.3), (10, 0.05)])  # 0.3, 0.05: area first
def test_an_aligned_crop_puts_the_landmarks_on_the_template(angle, scale):
    """Dots drawn at a face's landmarks in a photo 1/scale the template's size land on the template."""
    matrix = cv2.getRotationMatrix2D((0, 0), angle, 1 / scale)
    matrix[:, 2] = (50 / scale, 80 / scale)
    landmarks = np.asarray(TEMPLATE.points) * SIZE @ matrix[:, :2].T + matrix[:, 2]
    side = int(landmarks.max() + 60 / scale)
    photo = np.zeros((side, side, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(photo, (round(x), round(y)), max(2, round(1.5 / scale)), (255, 255, 255), -1)
    crop = align_face(photo, landmarks, TEMPLATE, SIZE)[..., 0].astype(float)
    for x, y in np.asarray(TEMPLATE.points) * SIZE:
        window = crop[round(y) - 5:round(y) + 6, round(x) - 5:round(x) + 6]
        ys, xs = np.mgrid[round(y) - 5:round(y) + 6, round(x) - 5:round(x) + 6]
        assert abs((window * xs).sum() / window.sum() - x) < 0.6 and abs((window * ys).sum() / window.sum() - y) < 0.6


def test_align_chooses_the_models_template_the_default_or_none(capsys):
    plain, carried = ModelSpec(("a", "b"), 64), ModelSpec(("a", "b"), 64, face_template=TEMPLATE)
    assert choose_template(None, True, carried) is TEMPLATE  # the default where there are landmarks and a template
    assert "aligning faces to the model's template: left_eye (21.8, 29.4)" in capsys.readouterr().err
    assert [choose_template(None, False, carried), choose_template(None, True, plain),
            choose_template(False, True, carried)] == [None, None, None]
    assert choose_template(True, True, plain) is DEFAULT_TEMPLATE
    assert "--align: the model carries no face template; aligning to left_eye (21.9, 29.5)" in capsys.readouterr().err
    with pytest.raises(AlignmentError, match="--align: the faces have no landmarks to align by; use --detector mtcnn"):
        choose_template(True, False, carried)


def test_a_template_is_kept_by_bundles_exports_and_the_trainers_config(tmp_path):
    bundle = load_bundle(make_checkpoint(tmp_path / "model", face_template=TEMPLATE))
    assert bundle.spec.face_template == TEMPLATE
    write_metadata(tmp_path, bundle, "onnx", {}, ["onnx"])
    (tmp_path / "manet.onnx").write_bytes(b"")
    assert read_spec(tmp_path).face_template == TEMPLATE
    assert load_bundle(make_checkpoint(tmp_path / "plain")).spec.face_template is None
    file = tmp_path / "template.json"
    file.write_text(json.dumps(dataclasses.asdict(TEMPLATE)))
    config = load_config(str(REPO / "configs/demo.py"), [f"face_template={file}"])
    assert model_spec(config, ("a", "b")).face_template == TEMPLATE
    file.write_text('{"points": [[0.5, 0.5]], "source": "x"}')
    with pytest.raises(BundleError, match=f"config.face_template {file}: not a face template \\(points must be 5"):
        model_spec(config, ("a", "b"))
    with pytest.raises(BundleError, match="--face-template nowhere.json: cannot be read as JSON"):
        read_face_template("nowhere.json", "--face-template")


def test_boxes_files_may_carry_landmarks(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([{"file": "a.png", "x": 1, "y": 2, "width": 30, "height": 40,
                                 "landmarks": [[10, 12], [20, 12], [15, 20], [11, 28], [19, 28.5]]},
                                {"file": "a.png", "x": 50, "y": 2, "width": 30, "height": 40}]))
    boxes = BoxesFile(path)
    assert boxes.has_landmarks
    with_landmarks, without = boxes.boxes_for(tmp_path / "a.png")
    assert with_landmarks.landmarks == ((10, 12), (20, 12), (15, 20), (11, 28), (19, 28.5))
    assert without.landmarks is None
    assert with_landmarks.scaled(0.5).landmarks[4] == (9.5, 14.25)
    path.write_text('[\n{"file": "a.png", "x": 1, "y": 2, "width": 3, "height": 4, "landmarks": [[1, 2]]}]')
    with pytest.raises(BoxesFileError, match="line 2: landmarks must be 5 \\[x, y\\] pairs"):
        BoxesFile(path)


def test_predict_refuses_align_without_landmarks(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "model", face_template=TEMPLATE)
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    assert predict.main([str(tmp_path / "astronaut.png"), "--checkpoint", str(checkpoint), "--align"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --align: the faces have no landmarks to align by; use --detector mtcnn (or --boxes with landmarks)")


def transformed(photo: np.ndarray, angle: float, scale: float, shift: tuple[int, int]) -> np.ndarray:
    """`photo` rotated by `angle` degrees and scaled about its centre, then shifted, on a canvas
    that holds all of it."""
    height, width = photo.shape[:2]
    side = round(max(height, width) * scale * 1.5)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[:, 2] += ((side - width) / 2 + shift[0], (side - height) / 2 + shift[1])
    return cv2.warpAffine(photo, matrix, (side, side), flags=cv2.INTER_LINEAR)


TRANSFORMS = {"upright": (0, 1, (0, 0)), "rotated 15": (15, 1, (0, 0)), "rotated -15": (-15, 1, (0, 0)),
              "rotated 30": (30, 1, (0, 0)), "rotated -30": (-30, 1, (0, 0)), "scaled 0.5": (0, 0.5, (0, 0)),
              "scaled 2": (0, 2, (0, 0)), "shifted": (0, 1, (37, -23))}


@pytest.fixture(scope="module")
def mtcnn():
    pytest.importorskip("mtcnn", reason="the mtcnn extra is not installed: pip install 'manet-jax[mtcnn]'")
    from manet_jax.inference.detectors import detect_mtcnn
    return detect_mtcnn


@pytest.fixture(scope="module")
def astronaut_template(mtcnn):
    """The astronaut's own geometry, placed by the default template: the template the aligned
    astronaut can meet exactly (a face of another shape meets a template only as nearly as a
    similarity allows)."""
    landmarks = np.asarray(mtcnn(data.astronaut())[0].landmarks)
    matrix = similarity(landmarks, np.asarray(DEFAULT_TEMPLATE.points))
    return FaceTemplate(landmarks @ matrix[:, :2].T + matrix[:, 2], "the astronaut's")


@pytest.mark.slow  # MTCNN (TensorFlow)
def test_aligned_faces_meet_the_template_whatever_the_photos_geometry(mtcnn, astronaut_template):
    """Each transformed photo's face aligned at 224x224, its landmarks detected again (on the same
    warp with a margin around the crop, for MTCNN's context), lie within 2 pixels of the template at
    100x100; the aligned crops match the upright one's far better than the box crops do."""
    size, pad = 224, 224
    points = np.asarray(astronaut_template.points) * size
    crops, errors, aligned, boxed = {}, {}, {}, {}
    for name, (angle, scale, shift) in TRANSFORMS.items():
        photo = transformed(data.astronaut(), angle, scale, shift)
        face, = mtcnn(photo)
        canvas = cv2.warpAffine(photo, similarity(np.asarray(face.landmarks), points + pad), (size + 2 * pad,) * 2)
        again, = mtcnn(canvas)
        errors[name] = np.linalg.norm(np.asarray(again.landmarks) - pad - points, axis=1) * SIZE / size
        valid = align_face(transformed(np.full_like(data.astronaut(), 255), angle, scale, shift),
                           np.asarray(face.landmarks), astronaut_template, size)[..., 0] == 255
        box = face.expanded(0.15, photo.shape[1], photo.shape[0])
        crops[name] = (align_face(photo, np.asarray(face.landmarks), astronaut_template, size).astype(float), valid,
                       cv2.resize(box.crop(photo), (size, size), interpolation=cv2.INTER_AREA).astype(float))
    upright, _, upright_box = crops["upright"]
    for name, (crop, valid, box_crop) in crops.items():
        aligned[name] = np.abs(crop - upright)[valid].mean()
        boxed[name] = np.abs(box_crop - upright_box).mean()
    print("\n".join(f"{name}: landmarks {' '.join(f'{e:.2f}' for e in errors[name])} px at 100x100; mean absolute "
                    f"difference from upright: aligned {aligned[name]:.1f}, box crop {boxed[name]:.1f}"
                    for name in TRANSFORMS))
    assert max(e.max() for e in errors.values()) <= 2.0
    assert all(aligned[name] < boxed[name] for name in TRANSFORMS if name != "upright")
    assert sum(aligned.values()) < 0.5 * sum(boxed.values())


@pytest.mark.slow  # MTCNN (TensorFlow), a dataset prepared
def test_the_template_tool_recovers_a_fabricated_datasets_geometry(mtcnn, astronaut_template, tmp_path, capsys):
    """The astronaut warped onto known landmark positions (112x112, shifted by 0 or +-2 pixels
    about them), as an image-folder dataset: the tool's template is those positions."""
    known = np.asarray(astronaut_template.points) * 112
    landmarks = np.asarray(mtcnn(data.astronaut())[0].landmarks)
    shifts = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2), (0, 0), (0, 0)]
    for k, (dx, dy) in enumerate(shifts):
        photo = align_face(data.astronaut(), landmarks, FaceTemplate((known + (dx, dy)) / 112, "x"), 112)
        folder = tmp_path / "manual" / "train" / str(k)
        folder.mkdir(parents=True)
        Image.fromarray(photo).save(folder / f"{k}.png")
        (tmp_path / "manual" / "test" / str(k)).mkdir(parents=True)
        Image.fromarray(photo).save(tmp_path / "manual" / "test" / str(k) / f"{k}.png")
    fx.build("image_folder/7", tmp_path / "data", tmp_path / "manual")
    again = np.asarray(mtcnn(align_face(data.astronaut(), landmarks, FaceTemplate(known / 112, "x"), 112))[0].landmarks)
    output = tmp_path / "template.json"
    assert face_template.main(["--dataset", "image_folder/7", "--data-dir", str(tmp_path / "data"),
                               "--output", str(output)]) == 0
    template = read_face_template(output, "--face-template")
    assert (template.faces, template.images) == (7, 7)
    # the known positions as MTCNN sees them (its own error, the same in every image, measured once)
    np.testing.assert_allclose(np.asarray(template.points) * 112, again, atol=0.5)
    print(f"template - known positions at 112x112: {np.abs(np.asarray(template.points) * 112 - known).max():.2f} px")
    assert np.abs(np.asarray(template.points) * 112 - known).max() < 2.0
    assert 0 < np.max(template.spread) * 112 < 2.5
    assert "MTCNN's landmarks on image_folder/7:train, the median of 7 faces in 7 images" in capsys.readouterr().out


@pytest.fixture(scope="module")
def aligned_model(tmp_path_factory, astronaut_template):
    """A random model at 32x32 carrying the astronaut's template, and its predictor."""
    from manet_jax.inference.predictor import Predictor
    checkpoint = make_checkpoint(tmp_path_factory.mktemp("aligned") / "model", image_size=MODEL_SIZE,
                                 face_template=astronaut_template)
    return checkpoint, Predictor(load_bundle(checkpoint), BATCH)


def expected_probabilities(predictor, pixels: np.ndarray, face: Box) -> list[float]:
    """The model's fused probabilities for `face` of `pixels` aligned onto its template."""
    from manet_jax.inference.preprocess import eval_view
    crop = align_face(pixels, np.asarray(face.landmarks), predictor.spec.face_template, MODEL_SIZE)
    return predictor(eval_view(crop, MODEL_SIZE)[None])["probabilities"][0].tolist()


@pytest.mark.slow  # MTCNN (TensorFlow), MA-Net compiled at 32x32
def test_predict_aligns_by_default_with_mtcnn_and_a_template(mtcnn, aligned_model, tmp_path, capsys):
    checkpoint, predictor = aligned_model
    photo = transformed(data.astronaut(), 20, 1, (0, 0))
    Image.fromarray(photo).save(tmp_path / "tilted.png")
    face, = mtcnn(photo)
    want = expected_probabilities(predictor, photo, face)
    runs = {}
    for option in ("--align", "--no-align", None):
        out = tmp_path / f"{option}.json"
        argv = [str(tmp_path / "tilted.png"), "--checkpoint", str(checkpoint), "--detector", "mtcnn",
                "--batch-size", str(BATCH), "--output", str(out), *([option] if option else [])]
        assert predict.main(argv) == 0
        runs[option] = list(json.loads(out.read_text())[0]["probabilities"]["fused"].values())
    assert "aligning faces to the model's template" in capsys.readouterr().err
    np.testing.assert_allclose(runs[None], want, atol=1e-6)
    np.testing.assert_allclose(runs["--align"], want, atol=1e-6)
    assert np.abs(np.subtract(runs["--no-align"], want)).max() > 1e-4  # the box crop: another input


@pytest.mark.slow  # MTCNN (TensorFlow), MA-Net compiled at 32x32
def test_the_server_aligns_as_predict_does(mtcnn, aligned_model):
    from manet_jax.inference.server import create_app
    _, predictor = aligned_model
    template = predictor.spec.face_template
    client = create_app(predictor, detect_faces=mtcnn, template=template, max_bytes=10**7,
                        max_pixels=10**7).test_client()
    assert client.get("/health").json["face_template"] == json.loads(json.dumps(dataclasses.asdict(template)))
    photo = transformed(data.astronaut(), -25, 0.7, (0, 0))
    png = io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    answer = client.post("/predict", data=png.getvalue(), content_type="image/png").json
    face, = mtcnn(photo)
    np.testing.assert_allclose(list(answer[0]["probabilities"]["fused"].values()),
                               expected_probabilities(predictor, photo, face), atol=1e-6)


@pytest.mark.slow  # MTCNN (TensorFlow), MA-Net compiled at 32x32
def test_videos_are_aligned_frame_by_frame_and_tracks_hold(mtcnn, aligned_model, tmp_path):
    """The astronaut turning 0-25 degrees over a clip: every frame's face aligned, one track."""
    from manet_jax.inference.clips import predict_video
    from manet_jax.inference.video import open_video
    _, predictor = aligned_model
    path = tmp_path / "turning.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (768, 768))
    for angle in range(0, 30, 5):
        writer.write(cv2.cvtColor(transformed(data.astronaut(), angle, 1, (0, 0)), cv2.COLOR_RGB2BGR))
    writer.release()
    result = predict_video(open_video(str(path)), predictor, detect_faces=mtcnn,
                           template=predictor.spec.face_template)
    assert [r.track for r in result.records] == [0] * 6
    for record, frame in zip(result.records, open_video(str(path)).frames()):
        face, = mtcnn(frame.pixels)
        np.testing.assert_allclose(list(record.probabilities["fused"].values()),
                                   expected_probabilities(predictor, frame.pixels, face), atol=1e-6)
