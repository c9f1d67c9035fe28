"""serve: the server started as a process on a free loopback port, asked over HTTP, its answers
compared with predict's JSON records for the same photo; bad requests; concurrent requests; the
upload page driven by a headless Chromium (skipped, saying so, where none is installed); and
`--runtime onnx` serving the model's ONNX export, the same records without attention maps.

A random 7-class model at 64x64 keeps this fast; accuracy is not the point.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from manet_jax import predict, serve
from manet_jax.bundle import default_class_names
from manet_jax.inference.visualize import HEIGHT, WIDTH
from train_helpers import REPO, environment, make_checkpoint, run

MAX_BYTES = 1_000_000  # the astronaut PNG (~0.5 MB) passes, 2 MB of it do not
BATCH = 8
START_TIMEOUT = 300  # seconds for the server to load and compile the model on a busy CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 120
            ) -> tuple[int, object]:
    """(status, decoded JSON answer) of a GET (no body) or POST."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: field -> (file name, bytes, type)."""
    boundary = uuid.uuid4().hex
    body = b""
    for field, (name, content, content_type) in fields.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n").encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(d / "astronaut.png")
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(d / "grey.png")  # no face
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory, photos):
    """The checkpoint, the subprocesses' environment and predict's JSON records for each photo, made
    with the server's batch size and maps so that the server finds the program compiled."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint = make_checkpoint(root / "model")
    env = environment(root / "cache")
    expected = {}
    for name in ("astronaut.png", "grey.png"):
        result = run([sys.executable, "-m", "manet_jax.predict", str(photos / name), "--checkpoint", str(checkpoint),
                      "--batch-size", str(BATCH), "--visualize", str(root / "vis"),
                      "--output", str(root / f"{name}.json")], env)
        assert result.returncode == 0, result.stderr
        expected[name] = json.loads((root / f"{name}.json").read_text())
    return {"checkpoint": checkpoint, "env": env, "expected": expected}


@contextlib.contextmanager
def serving(checkpoint: Path, env: dict[str, str], *options: str) -> Iterator[tuple[str, list[str]]]:
    """`python -m manet_jax.serve --checkpoint checkpoint *options` on a free loopback port: (its base
    URL, a list that holds its output once it has stopped by SIGTERM, which the exit checks)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "manet_jax.serve", "--checkpoint", str(checkpoint),
                                "--port", str(port), "--batch-size", str(BATCH), "--max-bytes", str(MAX_BYTES),
                                *options], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{process.stdout.read()}")
        with contextlib.suppress(OSError):
            if request(url + "/health", timeout=5)[0] == 200:
                break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not answer within {START_TIMEOUT} s:\n{process.communicate()[0]}")
        time.sleep(0.5)
    output: list[str] = []
    yield url, output
    process.terminate()  # SIGTERM while serving: a graceful stop
    output.append(process.communicate(timeout=30)[0])
    assert process.returncode == 0 and output[0].endswith("stopped by SIGTERM\n"), output[0][-3000:]
    assert f"Serving on {url}" in output[0]
    assert "Task queue depth" not in output[0]  # test_concurrent_requests sends more requests than --threads


@pytest.fixture(scope="module")
def server(setup):
    """The base URL of `python -m manet_jax.serve` on a free loopback port, stopped after the module."""
    with serving(setup["checkpoint"], setup["env"]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    """The checkpoint's float32 ONNX export (`python -m manet_jax.export --format onnx`)."""
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the `onnx` extra: pip install -e '.[onnx]'")
    pytest.importorskip("jax2onnx", reason="pip install --no-deps jax2onnx==0.17.1 (see setup.cfg's onnx extra)")
    directory = tmp_path_factory.mktemp("export") / "onnx"
    result = run([sys.executable, "-m", "manet_jax.export", "--checkpoint", str(setup["checkpoint"]), "--format",
                  "onnx", "--output", str(directory)], setup["env"])
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="module")
def onnx_server(setup, exported):
    """The base URL of `python -m manet_jax.serve --runtime onnx` serving `exported`, stopped after the
    module, which said once what runs the export."""
    with serving(exported, setup["env"], "--runtime", "onnx") as (url, output):
        yield url
    assert output[0].count(f"{exported}: ONNX Runtime, float32") == 1, output[0][-3000:]


def assert_same_records(answer: list, expected: list, file: str) -> None:
    """`answer` holds predict's records (`expected`) for the file named `file`: boxes and labels
    equal, probabilities to 1e-5."""
    assert len(answer) == len(expected)
    for got, want in zip(answer, expected):
        assert got["file"] == file
        assert {k: v for k, v in got.items() if k not in ("file", "probabilities", "visualization")} == \
               {k: v for k, v in want.items() if k not in ("file", "probabilities", "visualization")}
        assert got["probabilities"].keys() == want["probabilities"].keys() <= {"fused"}
        for branch, probabilities in want["probabilities"].items():
            assert list(got["probabilities"][branch]) == list(probabilities)
            np.testing.assert_allclose(list(got["probabilities"][branch].values()), list(probabilities.values()),
                                       atol=1e-5)


def test_the_server_listens_on_this_machine_only_by_default():
    args = serve.build_parser().parse_args(["--checkpoint", "model"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_the_server_takes_predicts_face_options():
    argv = ["--checkpoint", "model", "--detector", "mtcnn", "--margin", "0.3", "--min-neighbors", "3",
            "--image-size", "112", "--runtime", "onnx"]
    served, predicted = serve.build_parser().parse_args(argv), predict.build_parser().parse_args(["x.png", *argv])
    for key in ("checkpoint", "detector", "margin", "min_neighbors", "image_size", "runtime"):
        assert getattr(served, key) == getattr(predicted, key)
    assert (served.batch_size, predicted.batch_size) == (8, 32)


@pytest.mark.parametrize("option, message", [
    (["--port", "-1"], "--port -1: must be at least 0"), (["--max-bytes", "0"], "--max-bytes 0: must be at least 1"),
    (["--max-pixels", "0"], "--max-pixels 0: must be at least 1"),
    (["--threads", "0"], "--threads 0: must be at least 1"), (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--runtime", "onnx", "--image-size", "112"],
     "--image-size: an ONNX export has a fixed input size; export at the size you need"),
    (["--runtime", "onnx", "--checkpoint", "gs://bucket/onnx"],
     "--checkpoint gs://bucket/onnx: ONNX Runtime reads an export from a local folder; copy it here"),
])
def test_bad_options_are_refused(capsys, option, message):
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--checkpoint", "model", *option])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


def test_a_port_in_use_is_reported_before_the_model_loads(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--checkpoint", "no/such/model", "--port", str(port)]) == 2  # the model: not read
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"


@pytest.mark.slow
def test_a_port_in_use_is_an_error(server, setup):
    port = server.rsplit(":", 1)[1]
    result = run([sys.executable, "-m", "manet_jax.serve", "--checkpoint", str(setup["checkpoint"]), "--port", port,
                  "--batch-size", str(BATCH)], setup["env"])
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == \
        f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"


@pytest.mark.slow
def test_health(server):
    assert request(server + "/health") == (200, {"status": "ok", "classes": list(default_class_names(7)),
                                                 "image_size": 64, "face_template": None,
                                                 "attention_maps": True})


def assert_answers_as_predict(server: str, setup: dict, photos: Path) -> None:
    """The astronaut as the body and as a multipart upload, and a photo without a face: predict's
    records (the model's own, or XLA's to float32 round-off for an ONNX export)."""
    astronaut = (photos / "astronaut.png").read_bytes()
    status, answer = request(server + "/predict", astronaut, "image/png")
    assert status == 200
    assert [r["status"] for r in answer] == ["ok"]  # the random model's input: one detected face
    assert_same_records(answer, setup["expected"]["astronaut.png"], "upload")
    assert answer[0]["visualization"] is None

    body, content_type = multipart({"image": ("astronaut.png", astronaut, "image/png")})
    status, answer = request(server + "/predict", body, content_type)
    assert status == 200
    assert_same_records(answer, setup["expected"]["astronaut.png"], "astronaut.png")

    status, answer = request(server + "/predict", (photos / "grey.png").read_bytes(), "image/png")
    assert status == 200
    assert_same_records(answer, setup["expected"]["grey.png"], "upload")
    assert answer[0]["status"] == "no face"


@pytest.mark.slow
def test_predict_answers_with_predicts_records(server, setup, photos):
    assert_answers_as_predict(server, setup, photos)
    body, content_type = multipart({"image": ("../vis", (photos / "astronaut.png").read_bytes(), "image/png")})
    status, answer = request(server + "/predict?visualize=1", body, content_type)  # the server's own folder's name
    assert status == 200
    assert_same_records(answer, setup["expected"]["astronaut.png"], "vis")


@pytest.mark.slow
def test_predict_draws_the_attention_maps_on_request(server, setup, photos):
    status, answer = request(server + "/predict?visualize=1", (photos / "astronaut.png").read_bytes(), "image/png")
    assert status == 200
    assert_same_records(answer, setup["expected"]["astronaut.png"], "upload")
    prefix = "data:image/png;base64,"
    assert answer[0]["visualization"].startswith(prefix)
    png = Image.open(io.BytesIO(base64.b64decode(answer[0]["visualization"].removeprefix(prefix))))
    assert png.size == (WIDTH, HEIGHT)
    assert np.asarray(png.convert("L")).std() > 10  # a picture, not a blank


@pytest.mark.slow
@pytest.mark.parametrize("body, content_type, status, error", [
    (b"", "image/png", 400, "the image is empty"),
    (b"not a picture", "image/jpeg", 400, "upload: not an image file Pillow can identify"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png", 400, "upload: "),  # a PNG signature, then nothing
    (b"hello", "text/plain", 415, "Content-Type text/plain: send an image"),
    (b"hello", None, 415, "Content-Type application/x-www-form-urlencoded: send an image"),
    (b"\0" * (MAX_BYTES + 1), "image/png", 413,
     f"the request is larger than the server's limit of {MAX_BYTES} bytes (--max-bytes)"),
    (*multipart({"photo": ("a.png", b"\x89PNG", "image/png")}), 400, "the multipart form has no field 'image'"),
    (*multipart({"image": ("a.png", b"", "image/png")}), 400, "the image is empty"),
    (*multipart({"image": ("../notes.txt", b"hello", "text/plain")}), 400, "notes.txt: not an image file"),
], ids=["empty", "text", "broken", "text-type", "no-type", "too-large", "no-field", "empty-field", "text-field"])
def test_bad_requests_get_a_json_error_and_the_server_goes_on(server, setup, photos, body, content_type, status,
                                                              error):
    code, answer = request(server + "/predict", body, content_type)
    assert code == status
    assert list(answer) == ["error"] and answer["error"].startswith(error)
    assert "/tmp" not in answer["error"]  # the server's temporary file is not shown
    status, answer = request(server + "/predict", (photos / "grey.png").read_bytes(), "image/png")
    assert status == 200 and answer[0]["status"] == "no face"


@pytest.mark.slow
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(server, photos):
    width, height = 8000, serve.MAX_PIXELS // 8000 + 1  # a small PNG file, too many pixels to decode
    body = io.BytesIO()
    Image.new("L", (width, height)).save(body, format="PNG")
    assert len(body.getvalue()) < MAX_BYTES
    assert request(server + "/predict", body.getvalue(), "image/png") == (413, {
        "error": f"upload: the image decodes to {width}x{height} = {width * height} pixels, more than the server's "
                 f"limit of {serve.MAX_PIXELS} pixels (--max-pixels)"})
    status, answer = request(server + "/predict", (photos / "grey.png").read_bytes(), "image/png")
    assert status == 200 and answer[0]["status"] == "no face"


@pytest.mark.slow
def test_concurrent_requests_get_their_own_answers(server, setup, photos):
    names = ["astronaut.png", "grey.png"] * 4
    bodies = {name: (photos / name).read_bytes() for name in set(names)}
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(lambda name: request(server + "/predict", bodies[name], "image/png"), names))
    for name, (status, answer) in zip(names, answers):
        assert status == 200
        assert_same_records(answer, setup["expected"][name], "upload")


def chromium() -> tuple[str, str]:
    """(browser, driver) paths of an installed Chromium and its chromedriver; skips the test without."""
    pytest.importorskip("selenium", reason="the page test needs Selenium (pip install selenium)")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("the page test needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@contextlib.contextmanager
def chrome():
    """A headless Chromium driven by Selenium; skips the test without one."""
    browser, driver_path = chromium()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_upload_page_shows_the_faces_labels_and_attention_maps(server, setup, photos):
    with chrome() as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(server + "/")
        assert not driver.find_element(By.ID, "no-maps").is_displayed()
        expected = setup["expected"]["astronaut.png"][0]
        driver.find_element(By.ID, "image").send_keys(str(photos / "astronaut.png"))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".face img.visualization"))
        assert driver.find_element(By.ID, "status").text == "1 face(s)"
        assert driver.find_element(By.ID, "error").text == ""
        photo = driver.find_element(By.ID, "photo")
        assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", photo) == \
               [512, 512]
        box, = driver.find_elements(By.CSS_SELECTOR, "#photo-frame .box")
        assert box.text == f"0: {expected['label']}"
        shown, scale = box.rect, photo.rect["width"] / 512  # the box where predict's box lies on the shown photo
        for got, want in ((shown["x"] - photo.rect["x"], expected["box"]["x"]),
                          (shown["y"] - photo.rect["y"], expected["box"]["y"]),
                          (shown["width"], expected["box"]["width"]), (shown["height"], expected["box"]["height"])):
            assert got == pytest.approx(want * scale, abs=1.5)
        probability = expected["probabilities"]["fused"][expected["label"]]
        assert driver.find_element(By.CSS_SELECTOR, ".face .label").text == \
               f"face 0: {expected['label']} ({100 * probability:.1f}%)"
        visualization = driver.find_element(By.CSS_SELECTOR, ".face img.visualization")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].complete", visualization))
        assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                     visualization) == [WIDTH, HEIGHT]

        driver.find_element(By.ID, "image").send_keys(str(REPO / "setup.cfg"))  # not an image: an error shown
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == "error: setup.cfg: not an image file Pillow can identify"
        assert driver.find_elements(By.CSS_SELECTOR, ".face, .box") == []


def page(url: str) -> str:
    with urllib.request.urlopen(url + "/", timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


@pytest.mark.slow
def test_an_onnx_export_is_served_with_predicts_records_and_no_maps(onnx_server, setup, photos):
    assert request(onnx_server + "/health") == (200, {"status": "ok", "classes": list(default_class_names(7)),
                                                      "image_size": 64, "face_template": None,
                                                      "attention_maps": False})
    assert_answers_as_predict(onnx_server, setup, photos)
    astronaut = (photos / "astronaut.png").read_bytes()
    assert request(onnx_server + "/predict?visualize=1", astronaut, "image/png") == (400, {
        "error": "visualize: this server's model gives no attention maps (an ONNX export; serve --runtime xla "
                 "draws them)"})


@pytest.mark.slow
def test_the_upload_page_shows_the_faces_and_labels_of_an_onnx_export(onnx_server, setup, photos):
    """No attention pictures, and no broken image in their place; the page says why."""
    assert "const maps = false;" in page(onnx_server)
    with chrome() as driver:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(onnx_server + "/")
        assert driver.find_element(By.ID, "no-maps").is_displayed()
        expected = setup["expected"]["astronaut.png"][0]
        driver.find_element(By.ID, "image").send_keys(str(photos / "astronaut.png"))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".face .label"))
        assert driver.find_element(By.ID, "status").text == "1 face(s)"
        assert driver.find_element(By.ID, "error").text == ""
        box, = driver.find_elements(By.CSS_SELECTOR, "#photo-frame .box")
        assert box.text == f"0: {expected['label']}"
        probability = expected["probabilities"]["fused"][expected["label"]]
        assert driver.find_element(By.CSS_SELECTOR, ".face .label").text == \
               f"face 0: {expected['label']} ({100 * probability:.1f}%)"
        assert driver.find_elements(By.CSS_SELECTOR, ".face img") == []
        assert driver.execute_script(  # the photo is the page's one image, and it shows
            "return Array.from(document.images, (i) => [i.id, i.complete && i.naturalWidth > 0])") == [["photo", True]]


@pytest.mark.slow
def test_serving_a_checkpoint_that_is_not_an_onnx_export_is_one_error(setup):
    checkpoint = setup["checkpoint"]
    result = run([sys.executable, "-m", "manet_jax.serve", "--checkpoint", str(checkpoint), "--runtime", "onnx",
                  "--port", str(free_port())], setup["env"])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --checkpoint {checkpoint}: not an ONNX export (python -m manet_jax.export --format "
                      f"onnx makes one)"] == result.stderr.splitlines()[-1:], result.stderr
