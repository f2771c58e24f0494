"""Serve a trained experiment on the CPU: a web page to grade a fundus photograph, and a JSON API.

  python scripts/serve.py --config configs/demo.yaml                 # every trained fold, averaged
  python scripts/serve.py --model models/demo/fold0/export.pkl --port 8080 --threads 2
  python scripts/export_onnx.py --config configs/demo.yaml && python scripts/serve.py --config configs/demo.yaml --engine int8
  curl -F file=@photo.jpeg http://127.0.0.1:8000/predict

Loading an export.pkl unpickles it, and unpickling runs code: serve only model files you made or trust (ONNX files
hold no code).
"""

from pathlib import Path

from retinopathy import cli
from retinopathy.inference.engines import ENGINE_HELP, ENGINES
from retinopathy.inference.serve import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_model_paths, create_app, engine_file,
                              models_of_experiment)


def main() -> None:
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
    args = p.parse_args()
    if args.model:
        models = args.model
    elif args.config:
        models = models_of_experiment(cli.experiment(args))
    else:
        p.error("give --config configs/<exp>.yaml (its trained folds) or --model path/to/export.pkl")
    # A missing file is one line here, not a traceback from the server's start-up.
    check_model_paths(models)
    for path in models:
        engine_file(Path(path), args.engine)
    app = create_app(model_paths=models, threads=args.threads, max_bytes=int(args.max_mb * 2**20),
                     max_pixels=int(args.max_megapixels * 1e6), engine=args.engine)
    print(f"serving {len(models)} model(s) ({args.engine}) on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    cli.run(main)
