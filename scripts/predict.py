"""Predict the test set with every trained fold, average them, and write submissions/<exp>.csv (validated against
the sample submission). Prints the CV report of the out-of-fold predictions first.

  python scripts/predict.py --config configs/demo.yaml
  python scripts/predict.py --config configs/demo.yaml tta=true
"""

from retinopathy import cli
from retinopathy.predict import report_and_predict


def main() -> None:
    p = cli.parser(__doc__, config_default="configs/demo.yaml")
    cli.data_args(p)
    args = p.parse_args()
    report_and_predict(cli.experiment(args))


if __name__ == "__main__":
    cli.run(main)
