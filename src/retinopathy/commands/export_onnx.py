"""Export a trained experiment's folds for fast CPU serving: fold<K>/model.onnx (float32) and model-int8.onnx
(8-bit, calibrated on the fold's training images), each checked against PyTorch on the fold's validation images
(same grade on what share of them, largest output difference, QWK); the figures go to fold<K>/onnx.json.

  retinopathy export-onnx --config debug
  retinopathy export-onnx --config debug --folds 0 --calibration-images 32 --force
  retinopathy serve --config debug --engine onnx

Run it where the model was trained (int8 calibration reads the preprocessed images); --engines onnx needs only the
export.pkl files.
"""

import shlex

from .. import cli
from ..errors import UserError
from ..inference.engines import ENGINES, EXPORTED


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--folds", default="all", help="fold numbers (e.g. 0,2) or 'all' trained folds (default)")
    p.add_argument("--engines", nargs="+", choices=list(EXPORTED), default=list(EXPORTED),
                   help="the engines to export for: " + "; ".join(f"{e}: {ENGINES[e].help}" for e in EXPORTED)
                        + f" (default: {' '.join(EXPORTED)})")
    p.add_argument("--calibration-images", type=cli.number_in(1, 100_000), default=128,
                   help="training images that set the int8 activation ranges (default 128)")
    p.add_argument("--check-images", type=cli.number_in(1, 1_000_000), default=None,
                   help="validation images to compare on (default: the whole validation fold)")
    p.add_argument("--force", action="store_true", help="export again even where the files are up to date")
    p.add_argument("--any-export", action="store_true",
                   help="export folds even where they were not trained with this config's model settings")
    args = p.parse_args(argv)
    from ..inference.export import engine_agrees, export_fold

    experiment = cli.experiment(args)
    trained = experiment.trained_folds()
    if not trained:
        raise UserError(f"no trained fold in {experiment.dir}: run retinopathy train first")
    folds = trained if args.folds == "all" else cli.parse_fold_spec(args.folds, experiment.config.n_folds)
    experiment.check_exports([f for f in folds if f in trained], any_export=args.any_export)
    reports = [export_fold(experiment, fold, engines=tuple(args.engines), calibration_images=args.calibration_images,
                           check_images=args.check_images, force=args.force) for fold in folds]
    same = [f"--{k.replace('_', '-')}={v}" for k in ("config", "data_dir", "raw_dir", "competition")
            if (v := getattr(args, k, None))] + list(args.overrides)
    # the fastest engine whose grades agree with PyTorch's on every fold
    best = next((e for e in ("int8", "onnx") if all(engine_agrees(r, e) for r in reports)), None)
    if best is None:
        print("no exported engine grades as PyTorch does on every fold (see onnx.json): serve with --engine torch")
    else:
        print(f"serve them with: retinopathy serve {shlex.join(same)} --engine {best}")

