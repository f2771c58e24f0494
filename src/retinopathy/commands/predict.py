"""Predict the test set with every trained fold, average them, and write submissions/<exp>.csv (validated against
the sample submission). First: the CV report of the out-of-fold predictions, the post-processing tuned on them
(regression thresholds; for EyePACS, blending a patient's two eyes), and a row in reports/results.csv.

  retinopathy predict --config debug
  retinopathy predict --config debug tta=true
  retinopathy predict --experiments debug debug-ordinal      # weighted ensemble of two trained experiments
"""

from .. import cli
from ..paths import Paths


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--experiments", nargs="+", metavar="NAME",
                   help="trained experiments (models/<NAME>/) to ensemble instead of one config")
    p.add_argument("--name", help="the ensemble's name (default: ensemble-<a>+<b>...)")
    cli.add_folds(p)
    p.add_argument("--any-export", action="store_true",
                   help="use trained folds even where they were not trained with this config's model settings")
    args = p.parse_args(argv)
    from ..inference.ensemble import ensemble_experiments, load_experiment
    from ..pipeline import report_and_predict

    if args.experiments:
        paths = Paths.default(data_dir=args.data_dir)
        experiments = [load_experiment(n, paths) for n in args.experiments]
        for experiment in experiments:
            experiment.check_exports(any_export=args.any_export)
        ensemble_experiments(experiments, args.name)
    else:
        report_and_predict(cli.experiment(args), any_export=args.any_export)

