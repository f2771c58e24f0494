"""Serve a trained experiment on the CPU: a web page to grade a fundus photograph, and a JSON API.

  python scripts/serve.py --config configs/demo.yaml                 # every trained fold, averaged
  python scripts/serve.py --model models/demo/fold0/export.pkl --port 8080 --threads 2
  python scripts/export_onnx.py --config configs/demo.yaml && python scripts/serve.py --config configs/demo.yaml --engine int8
  curl -F file=@photo.jpeg http://127.0.0.1:8000/predict

Loading an export.pkl unpickles it, and unpickling runs code: serve only model files you made or trust (ONNX files
hold no code).
"""

import socket
from pathlib import Path

from .. import cli
from ..errors import UserError
from ..inference.engines import ENGINE_HELP, ENGINES
from ..inference.serve import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Grader, check_model_paths,
                                         create_app, engine_file, models_of_experiment)


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

    p = cli.parser(__doc__, config_default=None)
    cli.data_args(p)
    p.add_argument("--model", type=Path, action="append",
                   help="an export.pkl or .onnx to serve (repeat for an ensemble); config.yaml must sit beside it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20, help="largest upload, MB (default 30)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help="largest image, megapixels (default 40)")
    p.add_argument("--engine", choices=ENGINES, default="torch", help=ENGINE_HELP + " (default torch)")
    p.add_argument("--any-export", action="store_true",
                   help="serve models even where they were not trained with the given config's model settings")
    args = p.parse_args(argv)
    if args.model:
        models = args.model
    elif args.config:
        experiment = cli.experiment(args)
        experiment.check_exports(any_export=args.any_export)
        models = models_of_experiment(experiment)
    else:
        p.error("give --config configs/<exp>.yaml (its trained folds) or --model path/to/export.pkl")
    # A missing file is one line here, not a traceback from the server's start-up.
    check_model_paths(models)
    for path in models:
        engine_file(Path(path), args.engine)
    # The port is bound and the models are loaded before anything is announced: either failing is one line.
    sock = listening_socket(args.host, args.port)
    grader = Grader(models, args.threads, args.engine, args.any_export)
    app = create_app(grader=grader, max_bytes=int(args.max_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    print(f"serving {len(models)} model(s) ({grader.engine}) on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)
    server.run(sockets=[sock])

