"""Serve a trained experiment on the CPU: a web page to grade a fundus photograph, and a JSON API.

  python scripts/serve.py --config configs/demo.yaml                 # every trained fold, averaged
  python scripts/serve.py --model models/demo/fold0/export.pkl --port 8080 --threads 2
  curl -F file=@photo.jpeg http://127.0.0.1:8000/predict

Loading a model unpickles it, and unpickling runs code: serve only model files you made or trust.
"""

from pathlib import Path

from retinopathy import cli
from retinopathy.serve import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, check_model_paths, create_app,
                              models_of_experiment)


def main() -> None:
    import uvicorn

    p = cli.parser(__doc__, config_default=None)
    p.add_argument("--model", type=Path, action="append", help="an export.pkl to serve (repeat for an ensemble)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=None, help="torch threads for inference (default: all cores)")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20, help="largest upload, MB (default 30)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help="largest image, megapixels (default 40)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 + channels-last inference (faster on CPUs with AVX512-BF16/AMX; see benchmarks)")
    args = p.parse_args()
    if args.model:
        models = args.model
    elif args.config:
        models = models_of_experiment(cli.experiment(args))
    else:
        p.error("give --config configs/<exp>.yaml (its trained folds) or --model path/to/export.pkl")
    check_model_paths(models)  # a missing file is one line here, not a traceback from the server's start-up
    app = create_app(model_paths=models, threads=args.threads, max_bytes=int(args.max_mb * 2**20),
                     max_pixels=int(args.max_megapixels * 1e6), bf16=args.bf16)
    print(f"serving {len(models)} model(s) on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    cli.run(main)
