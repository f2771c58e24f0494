"""Serve a trained experiment on the CPU: a web page to grade a fundus photograph, and a JSON API.

  retinopathy serve --config debug                # every trained fold, averaged
  retinopathy serve --model models/debug/fold0/export.pkl --port 8080 --threads 2
  retinopathy export-onnx --config debug && retinopathy serve --config debug --engine onnx
  retinopathy serve --models-dir models/debug --engine onnx --workers 2 --host 0.0.0.0   # torch-free, 2 processes
  curl -F file=@photo.jpeg http://127.0.0.1:8000/predict

With --workers N, N processes share the port, each with its own copy of the models and cores/N threads; past one
machine, run the Dockerfile's image on several behind a load balancer.

Loading an export.pkl unpickles it, and unpickling runs code: serve only model files you made or trust (ONNX files
hold no code).
"""

import json
import os
import socket
from pathlib import Path

from .. import cli
from ..errors import UserError
from ..inference.engines import ENGINE_HELP, ENGINES, check_agreement
from ..inference.grader import Grader, check_model_paths, engine_file, models_in_folder
from ..inference.serve import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_UPLOADS,
    SETTINGS_ENV,
    UPLOAD_SECONDS,
    create_app,
    models_of_experiment,
)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is announced: a port in use is one line, not a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port, or stop what "
                        "is using it") from None
    return sock


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    import uvicorn

    p = cli.parser(__doc__)
    p.add_argument("--model", type=Path, action="append",
                   help="an export.pkl or .onnx to serve (repeat for an ensemble); config.yaml must sit beside it")
    p.add_argument("--models-dir", type=Path,
                   help="an experiment's folder (models/<exp>/): serve each fold*/ in it, by --engine")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--workers", type=cli.number_in(1, 64), default=1,
                   help="server processes sharing the port (default 1)")
    p.add_argument("--port", type=cli.number_in(0, 65535), default=8000, help="default 8000; 0: any free port")
    p.add_argument("--threads", type=cli.number_in(1, 1024), default=None,
                   help="inference threads (default: all cores)")
    p.add_argument("--max-mb", type=cli.number_in(0.001, 10_000, float), default=DEFAULT_MAX_BYTES / 2**20,
                   help="largest upload, MB (default 30)")
    p.add_argument("--max-megapixels", type=cli.number_in(0.001, 10_000, float), default=DEFAULT_MAX_PIXELS / 1e6,
                   help="largest image, megapixels (default 40)")
    p.add_argument("--upload-timeout", type=cli.number_in(1, 3600, float), default=UPLOAD_SECONDS,
                   help=f"seconds an upload may take to arrive; a slower one is cut off (408) (default "
                        f"{UPLOAD_SECONDS:g})")
    p.add_argument("--max-uploads", type=cli.number_in(1, 1024), default=MAX_UPLOADS,
                   help=f"uploads received at once per process; more are answered 503 (default {MAX_UPLOADS})")
    p.add_argument("--engine", choices=list(ENGINES), default="torch", help=ENGINE_HELP + " (default torch)")
    cli.add_folds(p)
    p.add_argument("--any-export", action="store_true",
                   help="serve models even where they were not trained with the given config's model settings")
    p.add_argument("--accept-disagreement", action="store_true",
                   help="serve an exported engine even where its export found it grading unlike PyTorch on more "
                        "than 1 %% of the validation images")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    tta = None  # the experiment's config beside the folds says
    if args.model:
        models = args.model
    elif args.models_dir:
        models = models_in_folder(args.models_dir, args.engine)
    elif args.config:
        experiment = cli.experiment(args)
        experiment.check_exports(any_export=args.any_export)
        models, tta = models_of_experiment(experiment), experiment.config.tta
    # A missing file is one line here, not a traceback from the server's start-up.
    check_model_paths(models)
    check_agreement([engine_file(Path(path), args.engine) for path in models], args.accept_disagreement)
    # The port is bound and the models are loaded before anything is announced: either failing is one line.
    sock = listening_socket(args.host, args.port)
    grader = Grader(models, args.threads, args.engine, args.any_export, tta=tta)
    limits = {"max_bytes": int(args.max_mb * 2**20), "max_pixels": int(args.max_megapixels * 1e6),
              "upload_seconds": args.upload_timeout, "max_uploads": args.max_uploads}
    where = f"http://{args.host}:{sock.getsockname()[1]}/"  # the port bound: --port 0 takes any free one
    if args.workers == 1:
        app = create_app(grader=grader, **limits)
        print(f"serving {len(models)} model(s) ({grader.engine}, TTA {'on' if grader.tta else 'off'}) on {where} "
              "(Ctrl-C stops)", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        return
    # The models loaded once above (any problem was one line); each worker process loads its own copy.
    engine, tta = grader.engine, grader.tta
    del grader
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    os.environ[SETTINGS_ENV] = json.dumps({"models": [str(Path(m).resolve()) for m in models], "threads": threads,
                                           "engine": engine, "any_export": args.any_export, "tta": tta,
                                           "parent": os.getpid(), **limits})
    config = uvicorn.Config("retinopathy.inference.serve:app_from_environment", factory=True,
                            workers=args.workers, log_level="warning")
    print(f"serving {len(models)} model(s) ({engine}) on {where} with {args.workers} worker processes of "
          f"{threads} thread(s) (Ctrl-C stops)", flush=True)
    import inspect

    from uvicorn.supervisors import Multiprocess

    # older uvicorn releases take the server's run as ``target``; newer ones build it themselves
    takes_target = "target" in inspect.signature(Multiprocess).parameters
    target = {"target": uvicorn.Server(config).run} if takes_target else {}
    Multiprocess(config, sockets=[sock], **target).run()

