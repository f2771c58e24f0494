"""Run the whole pipeline for one config: preprocess → folds → train every fold → ensemble → submission CSV.

With no arguments it synthesizes a small competition under data/ and runs configs/demo.yaml.

  python scripts/run_pipeline.py
  python scripts/run_pipeline.py --raw-dir ../shared/data/aptos2019-224 name=aptos-small epochs=8
  python scripts/run_pipeline.py --config configs/demo.yaml epochs=10 image_size=128
"""

from .. import cli


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__, config_default="demo")
    cli.data_args(p)
    p.add_argument("--folds", type=int, nargs="+", help="train only these folds (default: all)")
    args = p.parse_args(argv)
    from ..pipeline import run_pipeline

    run_pipeline(*cli.resolve(args), folds=args.folds)

