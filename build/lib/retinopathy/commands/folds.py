"""Write the folds CSV (id, grade, fold): stratified on the grade; for EyePACS both eyes of a patient share a fold.

  python scripts/make_folds.py --config configs/demo.yaml n_folds=5 seed=42
"""

from .. import cli
from ..data.folds import make_folds


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__, config_default="demo")
    cli.data_args(p)
    args = p.parse_args(argv)
    make_folds(cli.experiment(args))

