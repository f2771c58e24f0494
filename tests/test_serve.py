"""The grader: the JSON API through Starlette's TestClient (bad inputs included), a real uvicorn server under
load, and the web page in headless Chromium."""

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinopathy.errors import UserError
from retinopathy.inference.grader import Grader
from retinopathy.inference.serve import create_app, prepare_upload

from conftest import REPO, headless_chromium, run_script, shared, tiny_pipeline


@pytest.fixture(scope="module")
def trained(tiny_aptos, tmp_path_factory):
    experiment, _ = tiny_pipeline(tiny_aptos, tmp_path_factory.mktemp("serve"), "served")
    return experiment, [experiment.fold_dir(k) / "export.pkl" for k in (0, 1)]


@pytest.fixture(scope="module")
def client(trained):
    from starlette.testclient import TestClient
    with TestClient(create_app(model_paths=trained[1], threads=1, max_bytes=2 * 2**20)) as c:
        yield c


def photo() -> Path:
    """A real EyePACS photograph (skips where ../shared is absent)."""
    return sorted((shared("eyepacs-sample") / "train").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def synthetic_photo(tiny_eyepacs) -> Path:
    """A JPEG fundus photograph of the synthetic EyePACS: the parity checks run on a fresh clone too."""
    return sorted((tiny_eyepacs / "test").glob("*.jpeg"))[0]


def post(client, data: bytes, name="x.jpeg", query=""):
    return client.post("/predict" + query, files={"file": (name, data, "application/octet-stream")})


def test_explain_adds_a_heat_map_overlay_only_when_asked(client, trained, synthetic_photo):
    from PIL import Image

    plain = post(client, synthetic_photo.read_bytes()).json()
    assert "explanation" not in plain
    explained = post(client, synthetic_photo.read_bytes(), query="?explain=1").json()
    assert explained["grade"] == plain["grade"] and "explanation_error" not in explained
    png = base64.b64decode(explained["explanation"].split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (32, 32) and im.mode == "RGB", "the overlay has the model's input size"


def test_explanations_have_a_bounded_queue_so_a_plain_answer_never_waits_long(trained, synthetic_photo,
                                                                               monkeypatch):
    """Ten explanations asked at once: two are made, the rest refused at once (503, Retry-After); a plain
    prediction sent behind them waits for at most those two."""
    import asyncio

    from retinopathy.inference.serve import EXPLAIN_QUEUE

    grader = Grader(trained[1][:1], threads=1)

    def slow_heat_map(image, grade):
        time.sleep(0.5)
        return np.zeros(image.shape[:2], np.float32)

    monkeypatch.setattr(grader, "explanation", slow_heat_map)
    app, data = create_app(grader=grader), synthetic_photo.read_bytes()

    async def ask(client, query):
        started = time.perf_counter()
        answer = await client.post("/predict" + query, files={"file": ("x.jpeg", data, "image/jpeg")})
        return answer, time.perf_counter() - started

    async def crowd():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            explains = [asyncio.create_task(ask(client, "?explain=1")) for _ in range(10)]
            await asyncio.sleep(0.05)
            plain = await ask(client, "")
            return await asyncio.gather(*explains), plain

    explains, (plain, waited) = asyncio.run(crowd())
    made = [a for a, _ in explains if a.status_code == 200]
    refused = [a for a, _ in explains if a.status_code == 503]
    assert len(made) == EXPLAIN_QUEUE and len(refused) == 10 - EXPLAIN_QUEUE
    assert refused[0].headers["Retry-After"] and "explanations are already being made" in refused[0].json()["error"]
    assert made[0].json()["explanation"].startswith("data:image/png")
    assert plain.status_code == 200 and waited < 0.5 * EXPLAIN_QUEUE + 3, f"a plain answer waited {waited:.1f}s"


def test_a_close_call_is_named_by_its_two_grades():
    from types import SimpleNamespace

    from retinopathy.heads import get_head
    from retinopathy.inference.serve import close_call
    from retinopathy.metrics import GradeRule

    classifier = SimpleNamespace(head=get_head("classification"), rule=GradeRule.plain("classification"))
    assert close_call(classifier, np.array([[0.384, 0.352, 0.1, 0.1, 0.064]])) == [0, 1]
    assert close_call(classifier, np.array([[0.1, 0.7, 0.1, 0.05, 0.05]])) is None
    regression = SimpleNamespace(head=get_head("regression"),
                                 rule=GradeRule(True, (0.5, 1.5, 2.5, 3.5), 0.0, "regression"))
    assert close_call(regression, np.array([[1.45]])) == [1, 2] and close_call(regression, np.array([[1.56]])) == [2, 1]
    assert close_call(regression, np.array([[1.0]])) is None


def test_the_health_answer_carries_the_model_card(client, trained):
    card = client.get("/health").json()["card"]
    experiment, _ = trained
    assert card["experiment"] == "served" and card["folds"] == 2 and card["arch"] == experiment.config.arch
    assert card["fingerprint"] == experiment.config.fingerprint and card["synthetic"] is True
    assert 0 <= card["referable_auc_low"] <= card["referable_auc"] <= card["referable_auc_high"] <= 1
    assert card["cv_qwk"] is not None


def test_a_grader_of_pytorch_and_onnx_files_says_which_cannot_explain(exported):
    experiment, *_ = exported
    mixed = Grader([experiment.fold_dir(0) / "export.pkl", experiment.fold_dir(1) / "model.onnx"])
    assert not mixed.can_explain and "1 of these 2 are ONNX files (model.onnx)" in mixed.why_no_explanation
    assert "--engine torch" not in mixed.why_no_explanation, "it runs torch already: that is no fix"
    with pytest.raises(UserError, match="export.pkl files only"):
        mixed.explanation(np.zeros((32, 32, 3), np.uint8), 0)


@pytest.mark.parametrize("picture", ["blank", "white", "tiny", "transparent", "page"])
def test_a_picture_that_cannot_be_graded_gets_no_grade_and_the_reason(client, picture):
    """HTTP 200 (the request was fine; the answer is that this photograph cannot be graded), no grade."""
    pictures = {"blank": np.zeros((300, 400, 3), np.uint8), "white": np.full((300, 400, 3), 255, np.uint8),
                "tiny": np.zeros((1, 1, 3), np.uint8), "transparent": np.zeros((300, 400, 4), np.uint8),
                "page": np.full((600, 800, 3), 235, np.uint8)}
    image = pictures[picture]
    if picture == "page":
        for row in range(60, 560, 50):
            cv2.putText(image, "Lorem ipsum dolor sit amet", (30, row), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 2)
    ok, png = cv2.imencode(".png", image)
    answer = post(client, png.tobytes(), name=f"{picture}.png", query="?image=1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["gradable"] is False and body["grade"] is None and body["probabilities"] is None, body
    assert body["grade_name"] == "not gradable" and body["reason"], body
    assert body["preprocessed"].startswith("data:image/png;base64,"), "what the grader saw, all the same"


def test_predict_a_real_photograph(client, trained):
    r = post(client, photo().read_bytes(), query="?image=1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gradable"] is True and "reason" not in body
    assert body["grade"] in range(5) and body["grade_name"] in {"No DR", "Mild", "Moderate", "Severe",
                                                                "Proliferative DR"}
    assert len(body["probabilities"]) == 5 and sum(body["probabilities"]) == pytest.approx(1, abs=1e-4)
    assert body["grade"] == int(np.argmax(body["probabilities"])) and body["ms"] > 0
    assert body["model_id"].startswith("served-2xresnet10t-")
    png = base64.b64decode(body["preprocessed"].split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (32, 32)
    assert client.get("/health").json()["models"] == 2


def test_same_outputs_as_the_fastai_pipeline(trained, tmp_path, synthetic_photo):
    """The Grader against fastai's own inference (its test loader, transforms and loss activation) on each fold."""
    from retinopathy.experiment import load_learner_quietly

    experiment, models = trained
    grader = Grader(models, tta=False)
    img = prepare_upload(grader, synthetic_photo.read_bytes()).image
    Image.fromarray(img).save(tmp_path / "seen.png")
    ours = grader.outputs(img[None])[0]
    items = pd.DataFrame({"id": ["x"], "path": [str(tmp_path / "seen.png")]})
    theirs = []
    for model in models:
        learn = load_learner_quietly(model)
        with learn.no_bar():
            theirs.append(learn.get_preds(dl=learn.dls.test_dl(items, num_workers=0))[0].numpy()[0])
    assert np.allclose(ours, np.mean(theirs, axis=0), atol=1e-5)


def test_bf16_engine_close_to_float32(trained, synthetic_photo):
    img = prepare_upload(Grader(trained[1]), synthetic_photo.read_bytes()).image[None]
    float32, bf16 = Grader(trained[1]).outputs(img)[0], Grader(trained[1], engine="bf16").outputs(img)[0]
    assert bf16.shape == (5,) and np.allclose(bf16, float32, atol=0.03), (bf16, float32)


@pytest.fixture(scope="module")
def exported(trained):
    """The ONNX files of both folds, made by the export script as a user would run it."""
    experiment, models = trained
    env = {"RETINOPATHY_OUTPUT_DIR": str(experiment.paths.output), "RETINOPATHY_DATA_DIR": str(experiment.paths.data)}
    config = str(experiment.dir / "config.yaml")
    first = run_script("export_onnx.py", "--config", config, "--calibration-images", "12", cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr
    again = run_script("export_onnx.py", "--config", config, cwd=REPO, env=env)
    return experiment, models, first.stdout, again


def test_export_onnx_checks_each_fold_against_pytorch(exported):
    experiment, models, stdout, again = exported
    for fold in (0, 1):
        report = json.loads((experiment.fold_dir(fold) / "onnx.json").read_text())
        n_valid = len(pd.read_csv(experiment.folds_csv).query("fold == @fold"))
        assert report["onnx"]["images"] == n_valid and report["onnx"]["grade_agreement"] == 1.0
        assert report["onnx"]["max_abs_diff"] < 1e-4, "ONNX Runtime float32 computes what PyTorch does"
        assert 0 <= report["int8"]["grade_agreement"] <= 1 and report["int8"]["calibration_images"] == 12
        assert f"fold {fold}: against PyTorch float32 on fold {fold} validation images" in stdout
    assert again.returncode == 0 and again.stdout.count("already exported") == 2, "up-to-date folds are skipped"
    from retinopathy.inference.export import engine_agrees

    reports = [json.loads((experiment.fold_dir(k) / "onnx.json").read_text()) for k in (0, 1)]
    best = "int8" if all(engine_agrees(r, "int8") for r in reports) else "onnx"
    assert f"--engine {best}" in stdout.splitlines()[-1], "int8 is recommended only where its check passes"
    worse = {**reports[0], "int8": {**reports[0]["int8"], "grade_agreement": 0.9}}
    assert not engine_agrees(worse, "int8") and engine_agrees(reports[0], "onnx")


def test_an_engine_that_grades_unlike_pytorch_is_refused_unless_accepted(exported, tmp_path):
    experiment, _, _, _ = exported
    copy = tmp_path / "exp"
    shutil.copytree(experiment.dir, copy)
    report = json.loads((copy / "fold0" / "onnx.json").read_text())
    report["int8"]["grade_agreement"] = 0.409
    (copy / "fold0" / "onnx.json").write_text(json.dumps(report))
    refused = run_script("serve.py", "--models-dir", str(copy), "--engine", "int8", "--port", "0", cwd=tmp_path)
    assert refused.returncode == 2 and "gave PyTorch's grade on 40.9 % of its fold's validation images" in \
        refused.stderr and "--accept-disagreement" in refused.stderr and "Traceback" not in refused.stderr
    (copy / "fold1" / "onnx.json").unlink()
    refused = run_script("serve.py", "--models-dir", str(copy), "--engine", "onnx", "--port", "0", cwd=tmp_path)
    assert refused.returncode == 2 and "fold1/model.onnx: how often it grades as PyTorch does is not recorded" in \
        refused.stderr
    from retinopathy.inference.engines import check_agreement

    check_agreement(sorted(copy.glob("fold*/model-int8.onnx")), accept=True)  # said explicitly: served


def test_a_killed_export_leaves_no_temporary_behind(exported):
    """What a killed export leaves (the float32 file's and the quantiser's temporaries) is removed by the next
    export of the fold, even one that finds the fold up to date."""
    from retinopathy.files import TEMP_SUFFIX
    from retinopathy.inference.export import export_fold

    experiment, *_ = exported
    fold_dir = experiment.fold_dir(0)
    left = [fold_dir / f".model.x1y2z3.onnx{TEMP_SUFFIX}", fold_dir / f".model-int8.a1b2.onnx.pre{TEMP_SUFFIX}"]
    for path in left:
        path.write_bytes(b"")
    export_fold(experiment, 0, verbose=False)
    assert not any(p.exists() for p in left) and not list(fold_dir.glob(f".*{TEMP_SUFFIX}"))
    with experiment.fold_lock(0), pytest.raises(UserError, match=r"fold 0 of .* is in use by process"):
        export_fold(experiment, 0, verbose=False)  # a fold in training (or in another export) is not exported


def test_onnx_engines_serve_the_same_grader(exported, synthetic_photo):
    from starlette.testclient import TestClient
    _, models, _, _ = exported
    img = prepare_upload(Grader(models), synthetic_photo.read_bytes()).image[None]
    reference = Grader(models).outputs(img)
    onnx = Grader(models, engine="onnx")
    assert [f.name for f in onnx.files] == ["model.onnx"] * 2 and np.allclose(onnx.outputs(img), reference, atol=1e-5)
    int8 = Grader(models, engine="int8").outputs(img)
    assert int8.sum() == pytest.approx(1, abs=1e-4) and np.abs(int8 - reference).max() < 0.15, (int8, reference)
    only_onnx = Grader([m.parent / "model.onnx" for m in models])  # no pickle loaded at all
    assert only_onnx.engine == "onnx" and "-onnx-" in only_onnx.model_id
    with TestClient(create_app(model_paths=models, threads=1, engine="int8")) as client:
        body = post(client, synthetic_photo.read_bytes()).json()
        assert body["grade"] == int(np.argmax(body["probabilities"])) and "-int8-" in body["model_id"]
        assert client.get("/health").json()["engine"] == "int8"


def test_onnx_engines_say_explanations_need_torch(exported, synthetic_photo):
    from starlette.testclient import TestClient

    experiment, models, *_ = exported
    with TestClient(create_app(model_paths=models, engine="int8", threads=1)) as onnx_client:
        body = post(onnx_client, synthetic_photo.read_bytes(), query="?explain=1").json()
    assert body["grade"] in range(5) and body["explanation"] is None
    assert body["explanation_error"] == ("explanations need the torch engine (this server runs int8): start it "
                                         "with --engine torch")


def test_onnx_serving_imports_neither_torch_nor_fastai(exported, synthetic_photo):
    _, models, _, _ = exported
    probe = f"""
import sys
from pathlib import Path
from retinopathy.inference.grader import Grader
from retinopathy.inference.serve import create_app, grade_upload
grader = Grader([Path({str(models[0].parent / 'model.onnx')!r}), Path({str(models[1].parent / 'model-int8.onnx')!r})])
result = grade_upload(grader, Path({str(synthetic_photo)!r}).read_bytes())
print(result.grade, grader.engine)
print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer, loaded = done.stdout.splitlines()[-2:]
    assert answer.split()[0] in {"0", "1", "2", "3", "4"} and "onnxruntime" in loaded.split()
    assert not {"torch", "fastai", "torchvision", "timm"} & set(loaded.split()), loaded


def test_missing_onnx_file_is_one_line(trained, tmp_path):
    fold = tmp_path / "exp" / "fold0"
    fold.mkdir(parents=True)
    for name in ("export.pkl", "config.yaml"):
        shutil.copy(trained[1][0].parent / name, fold / name)
    with pytest.raises(UserError, match="model-int8.onnx not found: make it with retinopathy export-onnx"):
        Grader([fold / "export.pkl"], engine="int8")
    r = run_script("serve.py", "--model", str(fold / "export.pkl"), "--engine", "onnx", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "model.onnx not found" in r.stderr, r.stderr


def test_onnx_file_of_another_size_is_refused(exported, tmp_path):
    experiment, models, _, _ = exported
    fold = tmp_path / "fold0"
    fold.mkdir()
    shutil.copy(models[0].parent / "model.onnx", fold / "model.onnx")
    config = (models[0].parent / "config.yaml").read_text().replace("image_size: 32", "image_size: 48")
    (fold / "config.yaml").write_text(config)
    with pytest.raises(UserError, match="takes 32 px images but config.yaml beside it says image_size=48"):
        Grader([fold / "model.onnx"])


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:5000]


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # 81 megapixels in a few kilobytes
    return buf.getvalue()


@pytest.mark.parametrize("make, status, words", [
    (lambda: b"", 400, "empty upload"),
    (lambda: b"hello, I am not a picture", 415, "not an image"),
    (lambda: photo().read_bytes()[:200_000], 422, "truncated"),
    (truncated_png, 422, "could not be decoded"),
    (lambda: b"\xff" * (3 * 2**20), 413, "limit is 2.00 MB"),
    (bomb, 413, "MP"),
])
def test_bad_uploads_get_clear_4xx(client, make, status, words):
    r = post(client, make())
    assert r.status_code == status and words in r.json()["error"], r.text


def test_wrong_requests(client):
    assert client.get("/predict").status_code == 405 and "not allowed" in client.get("/predict").json()["error"]
    assert client.get("/nope").status_code == 404 and "no such page" in client.get("/nope").json()["error"]
    r = client.post("/predict", data={"other": "x"})
    assert r.status_code in (400, 415) and "error" in r.json()
    assert client.post("/predict", content=b"raw", headers={"content-type": "image/jpeg"}).status_code == 415
    assert client.get("/health").status_code == 200, "still serving after every bad request"
    assert "<input id=\"file\" type=\"file\"" in client.get("/").text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(trained[1][0]),
                             "--port", str(port), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read()
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _load(server, clients: int, each: int) -> list[int]:
    data = photo().read_bytes()

    def client_session(n):
        with httpx.Client(base_url=server, timeout=60) as c:
            return [c.post("/predict", files={"file": ("p.jpeg", data)}).status_code for _ in range(n)]

    with ThreadPoolExecutor(clients) as pool:
        return [s for batch in pool.map(client_session, [each] * clients) for s in batch]


@pytest.mark.slow
def test_load_200_requests_from_20_clients(server):
    statuses = _load(server, 20, 10)
    assert len(statuses) == 200 and set(statuses) == {200}


def test_load_smoke_20_requests_from_5_clients(server):
    """The load test's fast smoke (the full one is slow): concurrent clients, every answer a 200."""
    statuses = _load(server, 5, 4)
    assert len(statuses) == 20 and set(statuses) == {200}


def test_a_streamed_upload_is_cut_off_at_the_limit(server):
    """A chunked upload declares no length: the server stops reading at --max-mb (30 MB here), not after 100 MB."""
    import select
    from urllib.parse import urlparse

    host, port = urlparse(server).hostname, urlparse(server).port
    chunk = b"\xff" * 2**20
    sent, answer = 0, b""
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        try:
            while sent < 100 * 2**20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while b"}" not in answer:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    message = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert "stopped reading after 30." in message and "the limit is 30.00 MB (31,457,280 bytes)" in message, message
    assert sent < 60 * 2**20, f"{sent / 2**20:.0f} MB sent before the server refused"


def test_web_page_in_headless_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium() as driver:
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(str(photo()))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "grade").text.startswith("Grade "))
        text = driver.find_element(By.ID, "grade").text
        assert any(name in text for name in ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR"))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 5
        assert driver.find_element(By.ID, "seen").get_attribute("src").startswith("data:image/png;base64,")
        explained = driver.find_element(By.ID, "explained")
        assert explained.is_displayed() and explained.get_attribute("src").startswith("data:image/png;base64,")
        assert driver.execute_script("return arguments[0].naturalWidth", explained) > 0, "the overlay decoded"
        upload = driver.find_element(By.ID, "upload")
        assert upload.is_displayed() and driver.execute_script("return arguments[0].naturalWidth", upload) > 1000, \
            "the upload itself, at its own size, beside what the model saw"
        assert all(bar.size["height"] < 30 for bar in driver.find_elements(By.CSS_SELECTOR, "#bars .bar")), \
            "each grade's bar on one line"
        notice = driver.find_element(By.ID, "synthetic")
        assert notice.is_displayed() and "synthetic demo competition" in notice.text, "these models are synthetic"
        facts = driver.find_element(By.ID, "card-facts").text
        assert "fingerprint" in facts and "folds averaged" in facts and "out-of-fold QWK" in facts
        driver.save_screenshot(str(tmp_path / "page.png"))
        with Image.open(tmp_path / "page.png") as shot:
            assert np.asarray(shot.convert("L"), float).std() > 20, "the screenshot shows the page"
        blank = tmp_path / "blank.png"
        cv2.imwrite(str(blank), np.zeros((300, 300, 3), np.uint8))
        driver.find_element(By.ID, "file").send_keys(str(blank))
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "grade").text.startswith("Not gradable"))
        assert "no eye found" in driver.find_element(By.ID, "grade").text
        assert not driver.find_elements(By.CSS_SELECTOR, "#bars .bar"), "no grade's bars for a blank picture"
        # a close call, then a photograph that cannot be graded: the note goes with the answer it was about
        driver.execute_script("show({gradable: true, grade: 1, grade_name: 'Mild', value: 0.8, close_call: [1, 0], "
                              "probabilities: [0.4, 0.45, 0.1, 0.03, 0.02], preprocessed: '', model_id: 'm', ms: 1},"
                              " 'a.jpeg')")
        assert driver.find_element(By.ID, "tie").is_displayed()
        driver.execute_script("show({gradable: false, reason: 'no eye found', preprocessed: '', model_id: 'm', "
                              "ms: 1}, 'b.jpeg')")
        assert not driver.find_element(By.ID, "tie").is_displayed(), "no close-call note on a 'Not gradable' answer"


def start_server(command: list[str], env: dict | None = None, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start a server command with --port appended; wait for /health. Returns the process and its address."""
    port = free_port()
    proc = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
    proc.kill()
    raise AssertionError(f"no /health within {timeout}s")


def children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_workers_share_the_port_each_with_the_models(exported, synthetic_photo):
    experiment, *_ = exported
    proc, url = start_server([sys.executable, str(REPO / "scripts" / "serve.py"), "--models-dir",
                              str(experiment.dir), "--engine", "int8", "--accept-disagreement", "--workers", "2"])
    try:
        assert len(children(proc.pid)) >= 2, "two worker processes"
        answers = {post(httpx.Client(base_url=url), synthetic_photo.read_bytes()).json()["model_id"]
                   for _ in range(6)}
        assert len(answers) == 1 and "int8" in answers.pop()
        workers = children(proc.pid)
        proc.kill()  # SIGKILL: the parent cannot tell them to stop
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "the workers outlived the killed server"
        with socket.create_server(("127.0.0.1", int(url.rsplit(":", 1)[1]))):
            pass  # the port is free for a restart
    finally:
        proc.kill()
        proc.wait(timeout=30)


def alive(pid: int) -> bool:
    """Whether a process is running (a zombie waiting for its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_slow_bodies_are_cut_off_and_concurrent_uploads_are_capped(trained):
    """A real uvicorn server: clients trickling their bodies are answered 408 within the upload timeout, and
    uploads beyond --max-uploads are answered 503 at once rather than held in memory."""
    proc, url = start_server([sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(trained[1][0]),
                              "--threads", "1", "--upload-timeout", "2", "--max-uploads", "2"])
    port = int(url.rsplit(":", 1)[1])
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000\r\n\r\n")
    trickling = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(head + b"--b\r\n")
            trickling.append(sock)
        time.sleep(0.5)
        third = httpx.post(url + "/predict", files={"file": ("x.jpeg", b"\xff\xd8" + b"0" * 100)}, timeout=10)
        assert third.status_code == 503 and "uploads are already being received" in third.json()["error"]
        start = time.time()
        for sock in trickling:
            answer = b""
            while b"\r\n\r\n" not in answer:
                sock.sendall(b"x")  # a byte now and then: never a complete body
                try:
                    answer += sock.recv(4096)
                except TimeoutError:
                    break
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.time() - start < 8, "cut off at the upload timeout"
        assert httpx.get(url + "/health", timeout=5).status_code == 200
    finally:
        for sock in trickling:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_only_photograph_formats_are_decoded(client):
    from PIL import Image as PILImage

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    answer = post(client, eps, name="x.eps")
    assert answer.status_code == 415 and "not an image" in answer.json()["error"]
    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 64), (40, 20, 10)).save(buffer, "JPEG")
    trailing = post(client, buffer.getvalue() + b"trailing bytes a camera appended")
    assert trailing.status_code == 200, trailing.text
