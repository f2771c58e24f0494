"""The web app and JSON API around a :class:`~retinopathy.inference.grader.Grader`: upload checks, a Starlette app,
and the settings its worker processes start from. Grading itself is the Grader's (the same path as ``predict`` and
the kernel, TTA as the training config says).

Models load once at start-up, on the CPU. Inference runs in a worker thread, one request at a time (a CPU-bound
model gains nothing from running two at once), so the event loop keeps answering ``/health`` and new connections
while a prediction runs.

Loading an ``export.pkl`` unpickles it, and unpickling runs code: only files the operator names are loaded. The
ONNX engines load ``model.onnx`` files instead, which hold no code.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..competitions import PHOTO_FORMATS
from ..files import die_with_parent
from ..metrics import GRADE_NAMES
from ..preprocessing.image_io import Examined, decode_for_examining, encode_png
from .grader import Grader

DEFAULT_MAX_BYTES = 30 * 2**20  # the largest EyePACS photographs are about 8 MB
DEFAULT_MAX_PIXELS = 40_000_000  # about 7700 x 5200; EyePACS tops out near 18 megapixels


def describe_size(n: int) -> str:
    """A byte count as a person reads it, exact enough that a size just over a limit never reads as equal to it."""
    return f"{n / 2**20:.2f} MB ({n:,} bytes)"


class BadImage(Exception):
    """An upload the grader cannot use; ``status`` is the HTTP status to answer with (``retry``: the same upload
    may succeed in a few seconds)."""

    def __init__(self, status: int, message: str, retry: bool = False):
        super().__init__(message)
        self.status, self.message, self.retry = status, message, retry


@dataclass
class Prediction:
    """The grader's answer for one photograph: no grade where the photograph cannot be graded (``reason`` says
    why)."""

    grade: int | None
    grade_name: str
    probabilities: list[float] | None
    value: float | None
    preprocessed_png: bytes
    ms: float
    #: the Grad-CAM overlay as PNG (asked for with ``explain``), or why there is none
    explanation_png: bytes = b""
    explanation_error: str = ""
    gradable: bool = True
    reason: str = ""
    #: the two grades the answer falls between where it is a close call (else None): worth a second look
    close_call: list[int] | None = None


#: a close call: the top two grades' probabilities within this much, or the score within this much of a threshold
CLOSE_PROBABILITY, CLOSE_SCORE = 0.10, 0.15


def close_call(grader: Grader, outputs: np.ndarray) -> list[int] | None:
    """The two grades one served answer falls between, where it is a near tie (the chosen grade first)."""
    probabilities = grader.head.grade_probabilities(outputs)
    rule = grader.rule
    if rule.use_values or probabilities is None or not grader.head.argmax_grade:  # a cut score: near a threshold?
        value = float(rule.values(outputs)[0])
        thresholds = np.asarray(rule.thresholds, float)
        k = int(np.argmin(np.abs(thresholds - value)))
        if abs(thresholds[k] - value) < CLOSE_SCORE:
            return [k + 1, k] if value >= thresholds[k] else [k, k + 1]
        return None
    first, second = np.argsort(probabilities[0])[::-1][:2]
    if probabilities[0][first] - probabilities[0][second] < CLOSE_PROBABILITY:
        return [int(first), int(second)]
    return None


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> None:
    """Refuse what is not a complete image of sane size, before any expensive decoding."""
    if not data:
        raise BadImage(400, "empty upload: send a fundus photograph (JPEG or PNG) in the 'file' field")
    if len(data) > max_bytes:
        raise BadImage(413, f"upload is more than {describe_size(max_bytes)}: the limit is "
                            f"{describe_size(max_bytes)} (--max-mb)")
    try:
        with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as im:  # reads the header only
            width, height, fmt = im.width, im.height, im.format
    except Image.DecompressionBombError:
        raise BadImage(413, "image dimensions are too large to decode safely") from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds for "not an image"
        raise BadImage(415, "not an image: send a fundus photograph as JPEG or PNG") from None
    if width * height > max_pixels:
        raise BadImage(413, f"image is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
                            f"{max_pixels / 1e6:.0f} MP")
    # the end-of-image marker after the last scan: bytes a camera or an editor appends after it are fine
    if fmt == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise BadImage(422, "the JPEG is truncated (no end-of-image marker): upload the complete file")


def prepare_upload(grader: Grader, data: bytes) -> Examined:
    """An upload decoded, prepared exactly as training prepared its images, and assessed."""
    try:
        img, original = decode_for_examining(data, grader.size)
        return grader.examine(img, original)
    except Exception as e:  # noqa: BLE001 - a decoder failure on a user's file is a 422, not a 500
        raise BadImage(422, f"the image could not be decoded ({str(e).splitlines()[0][:120] or type(e).__name__})"
                            "; upload the complete file") from None


NOT_GRADABLE = "not gradable"


def grade_upload(grader: Grader, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, with_image: bool = False, explain: bool = False) -> Prediction:
    """Grade one upload; ``with_image`` also returns the preprocessed image as PNG (for the web page: its
    encoding costs about 6 ms, so the plain API skips it). A photograph that cannot be graded (no eye, blank, out of
    focus, ...) gets no grade, and the reason."""
    start = time.perf_counter()
    check_upload(data, max_bytes, max_pixels)
    examined = prepare_upload(grader, data)
    img = examined.image
    if not examined.quality.gradable:
        return Prediction(None, NOT_GRADABLE, None, None, encode_png(img) if with_image else b"",
                          (time.perf_counter() - start) * 1000, gradable=False, reason=examined.quality.reason)
    out = grader.outputs(img[None])
    grade = int(grader.grades(out)[0])
    value = float(grader.head.scores(out)[0])  # the head's continuous score (a regression's value)
    probabilities = grader.head.grade_probabilities(out)
    explanation, why_not = b"", ""
    if explain:
        if grader.can_explain:
            from .explain import overlay

            explanation = encode_png(overlay(img, grader.explanation(img, grade)))
        else:
            why_not = grader.why_no_explanation
    return Prediction(grade, GRADE_NAMES[grade], None if probabilities is None else probabilities[0].tolist(), value,
                      encode_png(img) if with_image else b"", (time.perf_counter() - start) * 1000, explanation,
                      why_not, close_call=close_call(grader, out))


async def receive_upload(request, state: dict, max_bytes: int, seconds: float, max_uploads: int) -> bytes:
    """The photograph of a multipart upload, received within the limits (bytes, time, uploads at once: counted in
    ``state["uploading"]``), or a :class:`BadImage` saying which was broken."""
    from starlette.exceptions import HTTPException

    limit = max_bytes + 64 * 1024  # the file, and the multipart framing around it
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit:
        raise BadImage(413, f"upload is {describe_size(declared)} (Content-Length)")
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise BadImage(415, "send the photograph as multipart/form-data in a field named 'file' "
                            "(curl -F file=@photo.jpeg)")
    if state["uploading"] >= max_uploads:  # each upload being read holds up to max_bytes of memory
        raise BadImage(503, f"{max_uploads} uploads are already being received: retry in a few seconds", retry=True)
    state["uploading"] += 1
    try:
        request._body = await read_body(request, limit, seconds)  # Starlette parses the form from it
    finally:
        state["uploading"] -= 1
    try:
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadImage(400, "no file: send the photograph in a multipart field named 'file'")
            return await upload.read(max_bytes + 1)
    except HTTPException as e:
        raise BadImage(e.status_code, f"malformed upload: {e.detail}") from None
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - a broken multipart body is the client's mistake
        raise BadImage(400, f"malformed upload ({type(e).__name__})") from None


def answer(result: Prediction, model_id: str, with_image: bool, explain: bool) -> dict:
    """The JSON answer to one upload. A photograph that cannot be graded is an answer, not a failed request:
    ``"gradable": false``, no grade, and the reason."""
    body = {"gradable": result.gradable, "grade": result.grade, "grade_name": result.grade_name,
            "probabilities": result.probabilities, "value": result.value, "close_call": result.close_call,
            "model_id": model_id, "ms": round(result.ms, 1)}
    if not result.gradable:
        body["reason"] = result.reason
    if with_image:
        body["preprocessed"] = "data:image/png;base64," + base64.b64encode(result.preprocessed_png).decode()
    if explain and result.gradable:
        body["explanation"] = ("data:image/png;base64," + base64.b64encode(result.explanation_png).decode()
                               if result.explanation_png else None)
        if result.explanation_error:
            body["explanation_error"] = result.explanation_error
    return body


#: explanations waiting or running at once in one process; more are refused (503): a plain answer never waits
#: behind more than this many heat maps
EXPLAIN_QUEUE = 2

#: the settings a ``--workers`` process builds its app from (JSON), set by the parent before it starts them
SETTINGS_ENV = "RETINOPATHY_SERVE_SETTINGS"


def app_from_environment():
    """The app one uvicorn worker process builds (``retinopathy serve --workers N``): it loads its own copy of the
    models, with the settings the parent put in ``$RETINOPATHY_SERVE_SETTINGS``."""
    import json
    import os

    s = json.loads(os.environ[SETTINGS_ENV])
    die_with_parent(s["parent"])  # a killed `serve` takes its workers with it: the port is free for a restart
    return create_app(model_paths=[Path(m) for m in s["models"]], threads=s["threads"], max_bytes=s["max_bytes"],
                      max_pixels=s["max_pixels"], engine=s["engine"], any_export=s["any_export"], tta=s["tta"],
                      upload_seconds=s["upload_seconds"], max_uploads=s["max_uploads"])


def models_of_experiment(experiment) -> list[Path]:
    """The export.pkl of every trained fold of an experiment."""
    return [experiment.fold_files(k).export for k in experiment.require_trained_folds()]


# ------------------------------------------------------------------------------------------- the web app
PAGE = Path(__file__).with_name("grader.html")
#: seconds a whole upload may take to arrive, and uploads read at once (``serve --upload-timeout``, ``--max-uploads``)
UPLOAD_SECONDS, MAX_UPLOADS = 30.0, 32


async def read_body(request, limit: int, seconds: float) -> bytes:
    """The request's body, read here up to ``limit`` bytes (a chunked upload declares no length, and must not be
    read whole before it is refused) and within ``seconds`` (a client trickling bytes is cut off: 408)."""
    body, received = bytearray(), 0
    deadline = asyncio.get_running_loop().time() + seconds
    stream = request.stream().__aiter__()
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(left, 0.001))
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise BadImage(408, f"the upload did not arrive within {seconds:g} s (received "
                                f"{describe_size(received)}): send it again on a faster connection") from None
        received += len(chunk)
        if received > limit:
            raise BadImage(413, f"upload over the limit: stopped reading after {describe_size(received)} "
                                "(no length was declared)")
        body += chunk


def create_app(grader: Grader | None = None, model_paths: list[Path] | None = None, threads: int | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS, engine: str = "torch",
               any_export: bool = False, tta: bool | None = None, upload_seconds: float = UPLOAD_SECONDS,
               max_uploads: int = MAX_UPLOADS):
    """The Starlette app. Models load in the lifespan (once, at start-up) unless a ``grader`` is given. An upload
    must arrive within ``upload_seconds`` (a client trickling its body holds nothing for long), and at most
    ``max_uploads`` are read at once (the rest get 503): memory stays bounded by them times ``max_bytes``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    state = {"grader": grader, "explaining": 0, "uploading": 0}
    one_at_a_time = asyncio.Semaphore(1)
    limit_text = f"the limit is {describe_size(max_bytes)} (--max-mb)"

    @asynccontextmanager
    async def lifespan(app):
        if state["grader"] is None:
            state["grader"] = await run_in_threadpool(Grader, model_paths or [], threads, engine, any_export, "cpu",
                                                      tta)
        yield

    def error(status: int, message: str, retry: bool = False) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status,
                            headers={"Retry-After": "5"} if retry else None)

    async def page(request: Request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def health(request: Request):
        g = state["grader"]
        return JSONResponse({"status": "ok", "model_id": g.model_id, "models": len(g.runners), "engine": g.engine,
                             "preprocess": g.method, "image_size": g.size, "head": g.head.name, "tta": g.tta,
                             "card": g.card})

    async def predict(request: Request):
        try:
            data = await receive_upload(request, state, max_bytes, upload_seconds, max_uploads)
        except BadImage as e:
            return error(e.status, e.message if e.status != 413 else f"{e.message}; {limit_text}", e.retry)
        g = state["grader"]
        with_image = request.query_params.get("image") in ("1", "true")
        explain = request.query_params.get("explain") in ("1", "true")
        if explain and state["explaining"] >= EXPLAIN_QUEUE:  # a heat map costs many plain answers' time
            return error(503, f"{state['explaining']} explanations are already being made: retry in a few seconds, "
                              "or ask without explain=1", retry=True)
        state["explaining"] += explain
        try:
            async with one_at_a_time:
                result = await run_in_threadpool(grade_upload, g, data, max_bytes, max_pixels, with_image, explain)
        except BadImage as e:
            return error(e.status, e.message)
        finally:
            state["explaining"] -= explain
        return JSONResponse(answer(result, g.model_id, with_image, explain))

    async def http_error(request: Request, exc: HTTPException):
        messages = {404: f"no such page: {request.url.path} (try / or POST /predict)",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    async def server_error(request: Request, exc: Exception):
        return error(500, f"internal error ({type(exc).__name__}); the server keeps running")

    routes = [Route("/", page), Route("/health", health), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})
