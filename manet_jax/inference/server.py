"""The prediction server's web application (Flask, WSGI): `GET /health`, `POST /predict` and `GET /`,
an upload page.

`/predict` takes an image as the request body (`Content-Type: image/*`) or as the multipart field
`image` and answers with predict's JSON records for it (`records.json_row`), computed by
`photos.predict_paths` on a temporary copy of the upload, with each face's attention picture on
`?visualize=1` where the model gives the maps (an ONNX export does not). An image that would
decode to more than `max_pixels` pixels is refused from its header, before it is decoded. One lock
serialises the decoding and the model runs, so the application is safe under a threaded WSGI
server and holds one decoded image at a time.
"""

from __future__ import annotations

import base64
import dataclasses
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flask import Flask, Request, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import secure_filename

from manet_jax.bundle import FaceTemplate
from manet_jax.inference.detectors import Detector
from manet_jax.inference.faces import MARGIN
from manet_jax.inference.images import ImageLoadError, decoded_size
from manet_jax.inference.photos import predict_paths
from manet_jax.inference.records import ERROR, json_row

if TYPE_CHECKING:
    from manet_jax.inference.onnx_runtime import OnnxPredictor
    from manet_jax.inference.predictor import Predictor

FIELD = "image"  # the multipart field holding the image
UPLOAD_NAME = "upload"  # the record's `file` when the upload has no file name


class BadUpload(HTTPException):
    """A request without a usable image; answered with its code and a JSON `error`."""

    def __init__(self, code: int, description: str):
        super().__init__(description)
        self.code = code


def create_app(predictor: Predictor | OnnxPredictor, *, maps: bool = True, detect_faces: Detector,
               margin: float = MARGIN, template: FaceTemplate | None = None, max_bytes: int, max_pixels: int
               ) -> Flask:
    """The application around `predictor`; `maps`: whether it gives the attention maps (a `Predictor`
    made with `maps=True`), which `?visualize=1` draws; without them (an `OnnxPredictor`)
    `?visualize=1` is refused with 400 and the page shows the faces and labels only (`/health` says
    which). Faces are found by `detect_faces` and cropped with `margin`, or aligned onto `template`,
    as predict does (`/health` names the template); request bodies over `max_bytes` and images that
    decode to more than `max_pixels` pixels are refused with 413."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_bytes
    app.json.sort_keys = False  # the records' keys and classes in predict's order
    lock = threading.Lock()
    page_html = PAGE.replace("__MAPS__", "true" if maps else "false")

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        message = (f"the request is larger than the server's limit of {max_bytes} bytes (--max-bytes)"
                   if isinstance(e, RequestEntityTooLarge) else e.description)
        return jsonify(error=message), e.code

    @app.get("/health")
    def health():
        return jsonify(status="ok", classes=list(predictor.spec.class_names), image_size=predictor.spec.image_size,
                       face_template=dataclasses.asdict(template) if template else None, attention_maps=maps)

    @app.post("/predict")
    def predict():
        visualize = request.args.get("visualize", "") not in ("", "0", "false")
        if visualize and not maps:
            raise BadUpload(400, "visualize: this server's model gives no attention maps (an ONNX export; "
                                 "serve --runtime xla draws them)")
        with tempfile.TemporaryDirectory(prefix="manet-serve-") as tmp:
            name, path = _save_upload(request, Path(tmp, "upload"))  # the upload's name may be any, "vis" too
            with lock:
                _check_pixels(name, path, max_pixels)
                records = predict_paths([str(path)], predictor, detect_faces=detect_faces, margin=margin,
                                        template=template, visualize=Path(tmp, "vis") if visualize else None)
            rows = []
            for record in records:
                record.file, record.message = name, record.message.replace(str(path), name)
                if record.status == ERROR:
                    raise BadUpload(400, record.message)
                if record.visualization:
                    png = Path(record.visualization).read_bytes()
                    record.visualization = "data:image/png;base64," + base64.b64encode(png).decode()
                rows.append(json_row(record))
        return jsonify(rows)

    @app.get("/")
    def page():
        return page_html

    return app


def warm_up(predictor: Predictor | OnnxPredictor) -> None:
    """Compiles the model by running it on one blank face, so that the first request is not slow."""
    size = predictor.spec.image_size
    predictor(np.zeros((1, size, size, 3), np.float32))


def _save_upload(req: Request, folder: Path) -> tuple[str, Path]:
    """(file name, path) of the image in `req`, written into `folder`; its bytes are not kept."""
    name, data = _upload(req)
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    return name, path


def _check_pixels(name: str, path: Path, max_pixels: int) -> None:
    """BadUpload 413 if the image at `path` decodes to more than `max_pixels` pixels (read from its
    header); an unreadable one is left to `predict_paths`, which says why."""
    try:
        width, height = decoded_size(path)
    except ImageLoadError:
        return
    if width * height > max_pixels:
        raise BadUpload(413, f"{name}: the image decodes to {width}x{height} = {width * height} pixels, more than "
                             f"the server's limit of {max_pixels} pixels (--max-pixels)")


def _upload(req: Request) -> tuple[str, bytes]:
    """(file name, bytes) of the image in `req`; BadUpload for a missing, empty or mistyped one."""
    if req.mimetype.startswith("image/"):
        name, data = UPLOAD_NAME, req.get_data(cache=False)
    elif req.mimetype == "multipart/form-data":
        upload = req.files.get(FIELD)
        if upload is None:
            raise BadUpload(400, f"the multipart form has no field '{FIELD}'")
        name, data = secure_filename(upload.filename or "") or UPLOAD_NAME, upload.read()
    else:
        raise BadUpload(415, f"Content-Type {req.mimetype or '(none)'}: send an image (Content-Type: image/*) "
                             f"or a multipart form with the image in the field '{FIELD}'")
    if not data:
        raise BadUpload(400, "the image is empty")
    return name, data


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MA-Net: facial expressions</title>
<style>
body { font-family: sans-serif; margin: 1em 2em; }
#photo-frame { position: relative; display: inline-block; margin: 1em 0; }
#photo { max-width: 90vw; max-height: 70vh; display: block; }
.box { position: absolute; border: 2px solid red; box-sizing: border-box; }
.box span { position: absolute; left: -2px; bottom: 100%; background: red; color: white; font-size: 12px;
            padding: 0 3px; white-space: nowrap; }
.face img { max-width: 90vw; display: block; }
#error { color: #b00; }
</style></head>
<body>
<h1>MA-Net: facial expressions</h1>
<form id="upload" action="predict" method="post" enctype="multipart/form-data">
  <input id="image" type="file" name="image" accept="image/*" required>
  <button id="submit" type="submit">Predict</button>
</form>
<p id="no-maps" hidden>This server's model gives no attention maps (an ONNX export): faces and labels only.</p>
<p id="status"></p><p id="error"></p>
<div id="photo-frame" hidden><img id="photo" alt="the uploaded photo"></div>
<div id="faces"></div>
<script>
const form = document.getElementById("upload"), frame = document.getElementById("photo-frame");
const photo = document.getElementById("photo"), faces = document.getElementById("faces");
const status = document.getElementById("status"), error = document.getElementById("error");
const maps = __MAPS__;  // whether the model gives attention maps, which ?visualize=1 draws
document.getElementById("no-maps").hidden = maps;
function add(parent, tag, props) { return parent.appendChild(Object.assign(document.createElement(tag), props)); }
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("image").files[0];
  frame.querySelectorAll(".box").forEach((box) => box.remove());
  faces.replaceChildren(); error.textContent = ""; frame.hidden = true; status.textContent = "predicting...";
  const response = await fetch(maps ? "predict?visualize=1" : "predict", {method: "POST", body: new FormData(form)});
  const answer = await response.json();
  if (!response.ok) { status.textContent = ""; error.textContent = "error: " + answer.error; return; }
  photo.src = URL.createObjectURL(file);
  await photo.decode();
  frame.hidden = false;
  const found = answer.filter((record) => record.status === "ok");
  status.textContent = found.length ? found.length + " face(s)" : "no face";
  for (const record of found) {
    const b = record.box, w = photo.naturalWidth, h = photo.naturalHeight;
    const box = add(frame, "div", {className: "box", title: record.label});
    Object.assign(box.style, {left: 100 * b.x / w + "%", top: 100 * b.y / h + "%",
                              width: 100 * b.width / w + "%", height: 100 * b.height / h + "%"});
    add(box, "span", {textContent: record.face + ": " + record.label});
    const face = add(faces, "div", {className: "face"});
    const p = record.probabilities.fused[record.label];
    add(face, "h2", {className: "label", textContent: "face " + record.face + ": " + record.label +
                     " (" + (100 * p).toFixed(1) + "%)"});
    if (record.visualization) {
      add(face, "img", {className: "visualization", src: record.visualization,
                        alt: "face " + record.face + " with its attention maps"});
    }
  }
});
</script>
</body></html>
"""
