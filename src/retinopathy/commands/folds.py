"""Write the folds CSV (id, grade, fold): stratified on the grade; for EyePACS both eyes of a patient share a fold.

  retinopathy folds --config debug n_folds=3 seed=1
"""

from .. import cli
from ..data.folds import make_folds


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    args = p.parse_args(argv)
    make_folds(cli.experiment(args))

