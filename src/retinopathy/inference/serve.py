"""CPU inference for the grader and the Starlette app around it.

Models are the folds' ``export.pkl`` files (fastai learners), loaded once at start-up, on the CPU. An upload goes
through the very preprocessing function training used (method and size from the ``config.yaml`` beside each
export), then through each model, averaged like the fold ensemble at prediction time. Inference runs in a worker
thread, one request at a time (a CPU-bound model gains nothing from running two at once), so the event loop keeps
answering ``/health`` and new connections while a prediction runs.

Loading an ``export.pkl`` unpickles it, and unpickling runs code: only files the operator names are loaded. The
ONNX engines load ``model.onnx`` files instead, which hold no code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import load_config
from ..errors import UserError
from ..experiment import provenance_problem, read_provenance
from ..metrics import GRADE_NAMES, GradeRule, scalar_scores
from ..preprocessing.fundus import prepare
from ..preprocessing.image_io import decode_image, encode_png
from .engines import ENGINES, MODEL_FILES, ONNX_FILES, OnnxRunner, tta_views

DEFAULT_MAX_BYTES = 30 * 2**20  # the largest EyePACS photographs are about 8 MB
DEFAULT_MAX_PIXELS = 40_000_000  # about 7700 x 5200; EyePACS tops out near 18 megapixels


def describe_size(n: int) -> str:
    """A byte count as a person reads it, exact enough that a size just over a limit never reads as equal to it."""
    return f"{n / 2**20:.2f} MB ({n:,} bytes)"


class BadImage(Exception):
    """An upload the grader cannot use; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Prediction:
    """The grader's answer for one photograph."""

    grade: int
    grade_name: str
    probabilities: list[float] | None
    value: float | None
    preprocessed_png: bytes
    ms: float
    #: the Grad-CAM overlay as PNG (asked for with ``explain``), or why there is none
    explanation_png: bytes = b""
    explanation_error: str = ""


def engine_file(path: Path, engine: str) -> Path:
    """The file a fold runs from: an ``.onnx`` path as given, else ``export.pkl`` (torch, bf16) or the ONNX file
    the export step wrote beside it (onnx, int8)."""
    if path.suffix == ".onnx" or engine not in ONNX_FILES:
        return path
    onnx = path.parent / ONNX_FILES[engine]
    if not onnx.is_file():
        raise UserError(f"{onnx} not found: make it with python scripts/export_onnx.py --config "
                        f"{path.parent / 'config.yaml'} (or serve with --engine torch)")
    return onnx


def check_model_paths(paths: list[Path]) -> list:
    """Each model's training config (from beside it), or a UserError naming what is missing or mismatched."""
    if not paths:
        raise UserError("no model to serve: pass --config (its trained folds) or --model path/to/export.pkl "
                        "(or model.onnx)")
    configs = []
    for p in map(Path, paths):
        if not p.is_file():
            raise UserError(f"{p}: model file not found")
        config_file = p.parent / "config.yaml"
        if not config_file.is_file():
            raise UserError(f"{config_file} not found: the config that trained {p.name} must sit beside it "
                            "(train_fold.py writes it there) so the same preprocessing is applied")
        configs.append(load_config(config_file))
    first = configs[0]
    for p, c in zip(paths[1:], configs[1:]):
        if (c.preprocess, c.image_size, c.head) != (first.preprocess, first.image_size, first.head):
            raise UserError(f"{p}: trained with preprocess={c.preprocess}, image_size={c.image_size}, head={c.head}; "
                            f"{paths[0]} with {first.preprocess}, {first.image_size}, {first.head}: serve models of "
                            "one experiment together")
    return configs


def check_provenance(model_file: Path, config, onnx_fingerprint: str | None = None) -> None:
    """Refuse a model file that was not made by the config beside it: an ``export.pkl`` whose ``fingerprint.json``
    says otherwise (or is missing), or an ONNX file whose metadata does."""
    if model_file.suffix == ".onnx":
        if onnx_fingerprint == config.fingerprint:
            return
        problem = ("no training fingerprint in its metadata (exported by an older version)" if onnx_fingerprint is None
                   else f"exported from a model trained with other settings (fingerprint {onnx_fingerprint}) than "
                        f"config.yaml beside it ({config.fingerprint})")
        raise UserError(f"{model_file}: {problem}: export it again (scripts/export_onnx.py --force), or pass "
                        "--any-export to serve it anyway")
    problem = provenance_problem(read_provenance(model_file.parent), config)
    if problem:
        raise UserError(f"{model_file}: {problem} (config.yaml beside it): train it again, or pass --any-export "
                        "to serve it anyway")


class Grader:
    """One or more trained folds on the CPU, and everything needed to grade a photograph.

    ``engine`` says how the folds run (see :data:`~retinopathy.engines.ENGINES`); an ``.onnx`` path always runs in
    ONNX Runtime. Every engine computes the same :class:`~retinopathy.engines.ServingModel`."""

    def __init__(self, model_paths: list[Path], threads: int | None = None, engine: str = "torch",
                 any_export: bool = False, device: str = "cpu"):
        if engine not in ENGINES:
            raise UserError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
        self.paths = [Path(p).resolve() for p in model_paths]
        self.configs = configs = check_model_paths(self.paths)
        first = configs[0]
        self.config = first
        self.method, self.size = first.preprocess, first.image_size
        self.regression = first.head == "regression"
        # fold<K>/export.pkl: the experiment's folder, with its tuning.json, is two levels up
        self.rule = GradeRule.read(self.paths[0].parent.parent, first.head)
        self.files = [engine_file(p, engine) for p in self.paths]
        all_onnx = all(f.suffix == ".onnx" for f in self.files)
        self.engine = "onnx" if all_onnx and engine not in ONNX_FILES else engine
        if not any_export:  # a pickle of unknown or other origin is refused before it is unpickled
            for f, config in zip(self.files, configs):
                if f.suffix != ".onnx":
                    check_provenance(f, config)
        self.runners = [OnnxRunner(f, threads) if f.suffix == ".onnx" else
                        self._torch_runner(f, threads, engine == "bf16", device) for f in self.files]
        for f, run in zip(self.files, self.runners):
            if getattr(run, "image_size", self.size) not in (self.size, None):
                raise UserError(f"{f} takes {run.image_size} px images but config.yaml beside it says image_size="
                                f"{self.size}: export it again (scripts/export_onnx.py --force)")
        if not any_export:  # an ONNX file carries its fingerprint in its metadata, read once its session is open
            for f, run, config in zip(self.files, self.runners, configs):
                if f.suffix == ".onnx":
                    check_provenance(f, config, run.fingerprint)
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.read_bytes())
        self.model_id = f"{first.name}-{len(self.files)}x{first.arch}-{self.engine}-{digest.hexdigest()[:10]}"

    def _torch_runner(self, export: Path, threads: int | None, bf16: bool, device: str):
        """A fold's export.pkl in PyTorch: torch and fastai are imported only for these engines."""
        import torch

        from ..experiment import load_learner_quietly
        from .torch_engine import TorchRunner, serving_model

        if threads:
            torch.set_num_threads(threads)
        return TorchRunner(serving_model(load_learner_quietly(export), self.regression), bf16=bf16, device=device)

    # --------------------------------------------------------------------------------------- input checks
    @staticmethod
    def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> None:
        """Refuse what is not a complete image of sane size, before any expensive decoding."""
        if not data:
            raise BadImage(400, "empty upload: send a fundus photograph (JPEG or PNG) in the 'file' field")
        if len(data) > max_bytes:
            raise BadImage(413, f"upload is more than {describe_size(max_bytes)}: the limit is "
                                f"{describe_size(max_bytes)} (--max-mb)")
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height, fmt = im.width, im.height, im.format
        except Image.DecompressionBombError:
            raise BadImage(413, "image dimensions are too large to decode safely") from None
        except Exception:  # noqa: BLE001 - PIL raises many kinds for "not an image"
            raise BadImage(415, "not an image: send a fundus photograph as JPEG or PNG") from None
        if width * height > max_pixels:
            raise BadImage(413, f"image is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
                                f"{max_pixels / 1e6:.0f} MP")
        if fmt == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise BadImage(422, "the JPEG is truncated (no end-of-image marker): upload the complete file")

    def preprocess(self, data: bytes) -> np.ndarray:
        """An upload decoded and prepared exactly as training prepared its images."""
        try:
            img, _ = decode_image(data, min_side=self.size)
            out, _ = prepare(img, self.method, self.size)
        except Exception as e:  # noqa: BLE001 - a decoder failure on a user's file is a 422, not a 500
            raise BadImage(422, f"the image could not be decoded ({str(e).splitlines()[0][:120] or type(e).__name__})"
                                "; upload the complete file") from None
        return out

    def outputs(self, img: np.ndarray) -> np.ndarray:
        """The fold-averaged output for one prepared RGB image: probabilities (5) or a value (1)."""
        return self.batch_outputs(img[None])[0]

    def batch_outputs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Fold-averaged (and with ``tta`` view-averaged) outputs for prepared images (N, H, W, 3)."""
        return np.mean([run(np.ascontiguousarray(view)) for run in self.runners for view in tta_views(images, tta)],
                       axis=0)

    def explanation(self, img: np.ndarray, grade: int) -> tuple[bytes, str]:
        """The Grad-CAM overlay of a prepared image for ``grade``, averaged over the folds, as PNG; or, where the
        folds run in ONNX Runtime (no gradients), an empty PNG and the reason."""
        if any(f.suffix == ".onnx" for f in self.files):
            return b"", (f"explanations need the torch engine (this server runs {self.engine}): start it with "
                         "--engine torch")
        from .explain import heat_map, overlay

        return encode_png(overlay(img, heat_map([run.model for run in self.runners], img, grade))), ""

    def predict(self, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                with_image: bool = False, explain: bool = False) -> Prediction:
        """Grade one upload; ``with_image`` also returns the preprocessed image as PNG (for the web page: its
        encoding costs about 6 ms, so the plain API skips it)."""
        start = time.perf_counter()
        self.check_upload(data, max_bytes, max_pixels)
        img = self.preprocess(data)
        out = self.outputs(img)
        grade = int(self.rule.grades(out[None])[0])
        value = float(scalar_scores(out[None])[0])  # the regression value, or the expected grade
        probabilities = None if self.regression else [float(p) for p in out]
        explanation, why_not = self.explanation(img, grade) if explain else (b"", "")
        return Prediction(grade, GRADE_NAMES[grade], probabilities, value, encode_png(img) if with_image else b"",
                          (time.perf_counter() - start) * 1000, explanation, why_not)


#: the settings a ``--workers`` process builds its app from (JSON), set by the parent before it starts them
SETTINGS_ENV = "RETINOPATHY_SERVE_SETTINGS"


def app_from_environment():
    """The app one uvicorn worker process builds (``retinopathy serve --workers N``): it loads its own copy of the
    models, with the settings the parent put in ``$RETINOPATHY_SERVE_SETTINGS``."""
    import json
    import os

    s = json.loads(os.environ[SETTINGS_ENV])
    return create_app(model_paths=[Path(m) for m in s["models"]], threads=s["threads"], max_bytes=s["max_bytes"],
                      max_pixels=s["max_pixels"], engine=s["engine"], any_export=s["any_export"])


def models_in_folder(folder: Path, engine: str) -> list[Path]:
    """The trained folds in an experiment's folder (``fold<K>/``), as the files ``engine`` runs from: what a
    container mounts at ``/models``."""
    name = MODEL_FILES[engine]
    found = sorted(Path(folder).glob(f"fold*/{name}"))
    if not found:
        raise UserError(f"{folder}: no fold*/{name} for the {engine} engine (mount or copy an experiment's folder, "
                        "models/<exp>/, with its ONNX files from scripts/export_onnx.py)")
    return found


def models_of_experiment(experiment) -> list[Path]:
    """The export.pkl of every trained fold of an experiment."""
    return [experiment.fold_dir(k) / "export.pkl" for k in experiment.require_trained_folds()]


# ------------------------------------------------------------------------------------------- the web app
PAGE = Path(__file__).with_name("grader.html")


def create_app(grader: Grader | None = None, model_paths: list[Path] | None = None, threads: int | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS, engine: str = "torch",
               any_export: bool = False):
    """The Starlette app. Models load in the lifespan (once, at start-up) unless a ``grader`` is given."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    state = {"grader": grader}
    one_at_a_time = asyncio.Semaphore(1)
    limit_text = f"the limit is {describe_size(max_bytes)} (--max-mb)"

    @asynccontextmanager
    async def lifespan(app):
        if state["grader"] is None:
            state["grader"] = await run_in_threadpool(Grader, model_paths or [], threads, engine, any_export)
        yield

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    async def page(request: Request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def health(request: Request):
        g = state["grader"]
        return JSONResponse({"status": "ok", "model_id": g.model_id, "models": len(g.runners), "engine": g.engine,
                             "preprocess": g.method, "image_size": g.size, "head": g.config.head})

    async def predict(request: Request):
        limit = max_bytes + 64 * 1024  # the file, and the multipart framing around it
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit:
            return error(413, f"upload is {describe_size(declared)} (Content-Length); {limit_text}")
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            return error(415, "send the photograph as multipart/form-data in a field named 'file' "
                              "(curl -F file=@photo.jpeg)")
        # Read the body ourselves, up to the limit: a chunked upload declares no length, and must not be read
        # whole before it is refused.
        body, received = bytearray(), 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return error(413, f"upload over the limit: stopped reading after {describe_size(received)} "
                                  f"(no length was declared); {limit_text}")
            body += chunk
        request._body = bytes(body)  # Starlette parses the form from the body already read
        try:
            async with request.form(max_files=1, max_fields=4) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    return error(400, "no file: send the photograph in a multipart field named 'file'")
                data = await upload.read(max_bytes + 1)
        except HTTPException as e:
            return error(e.status_code, f"malformed upload: {e.detail}")
        except Exception as e:  # noqa: BLE001 - a broken multipart body is the client's mistake
            return error(400, f"malformed upload ({type(e).__name__})")
        g = state["grader"]
        with_image = request.query_params.get("image") in ("1", "true")
        explain = request.query_params.get("explain") in ("1", "true")
        try:
            async with one_at_a_time:
                result = await run_in_threadpool(g.predict, data, max_bytes, max_pixels, with_image, explain)
        except BadImage as e:
            return error(e.status, e.message)
        body = {"grade": result.grade, "grade_name": result.grade_name, "probabilities": result.probabilities,
                "value": result.value, "model_id": g.model_id, "ms": round(result.ms, 1)}
        if with_image:
            body["preprocessed"] = "data:image/png;base64," + base64.b64encode(result.preprocessed_png).decode()
        if explain:
            body["explanation"] = ("data:image/png;base64," + base64.b64encode(result.explanation_png).decode()
                                   if result.explanation_png else None)
            if result.explanation_error:
                body["explanation_error"] = result.explanation_error
        return JSONResponse(body)

    async def http_error(request: Request, exc: HTTPException):
        messages = {404: f"no such page: {request.url.path} (try / or POST /predict)",
                    405: f"{request.method} is not allowed on {request.url.path}"}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    async def server_error(request: Request, exc: Exception):
        return error(500, f"internal error ({type(exc).__name__}); the server keeps running")

    routes = [Route("/", page), Route("/health", health), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})
