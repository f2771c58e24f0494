"""Run the whole pipeline for one config: preprocess → folds → train every fold → ensemble → submission CSV.

With no arguments it synthesizes a small competition under data/ and runs configs/demo.yaml.

  retinopathy pipeline --config debug                            # seconds: every stage, a tiny synthetic set
  retinopathy pipeline --config debug name=debug-ordinal head=ordinal pool=gem
  retinopathy pipeline --config aptos_cpu_pretrained --competition aptos2019
"""

from .. import cli


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--folds", type=int, nargs="+", help="train only these folds (default: all)")
    args = p.parse_args(argv)
    from ..pipeline import run_pipeline

    run_pipeline(*cli.resolve(args), folds=args.folds)

