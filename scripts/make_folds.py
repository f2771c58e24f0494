"""Write the folds CSV (id, grade, fold): stratified on the grade; for EyePACS both eyes of a patient share a fold.

  python scripts/make_folds.py --config configs/demo.yaml n_folds=5 seed=42
"""

from retinopathy import cli
from retinopathy.data.folds import make_folds


def main() -> None:
    p = cli.parser(__doc__, config_default="configs/demo.yaml")
    cli.data_args(p)
    args = p.parse_args()
    make_folds(cli.experiment(args))


if __name__ == "__main__":
    cli.run(main)
