"""Run the whole pipeline for one config: preprocess → folds → train every fold → ensemble → submission CSV.

With no arguments it synthesizes a small competition under data/ and runs configs/demo.yaml.

  python scripts/run_pipeline.py
  python scripts/run_pipeline.py --config configs/aptos_cpu.yaml --raw-dir ../shared/data/aptos2019-224
  python scripts/run_pipeline.py --config configs/demo.yaml epochs=10 image_size=128
"""

from retinopathy import cli
from retinopathy.pipeline import run_pipeline


def main() -> None:
    p = cli.parser(__doc__, config_default="configs/demo.yaml")
    p.add_argument("--raw-dir", help="a competition folder in Kaggle layout (default: data/raw/<dataset>)")
    p.add_argument("--folds", type=int, nargs="+", help="train only these folds (default: all)")
    args = p.parse_args()
    run_pipeline(*cli.resolve(args, raw_dir=args.raw_dir), folds=args.folds)


if __name__ == "__main__":
    cli.run(main)
