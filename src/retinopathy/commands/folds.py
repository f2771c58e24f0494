"""Write the folds CSV (id, grade, fold, group): stratified on the grade, every copy of a photograph in one fold
(found from the hashes preprocess records: run it first), and for EyePACS both eyes of a patient too; copies whose
grades differ are kept, dropped or merged as conflicting_grades says. Also writes
data/cleaning/<dataset>-duplicates.csv.

  retinopathy folds --config debug n_folds=3 seed=1
  retinopathy folds --config debug conflicting_grades=keep exclude_ungradable=true
"""

from .. import cli
from ..data.folds import make_folds


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    args = p.parse_args(argv)
    make_folds(cli.experiment(args))

