"""Train one fold (or all) with fastai; writes models/<exp>/fold<K>/ (export.pkl, oof.csv, history.csv, loss.png,
config.yaml). Run one process per fold on a multi-GPU box, or --fold all one after another.

  retinopathy train --config debug --fold 0
  retinopathy train --config debug --fold all name=debug-r18 arch=resnet18 epochs=2   # another experiment
  retinopathy train --config debug --fold 0              # again: up to date is skipped, interrupted carries on
  retinopathy train --config debug --fold 0 --restart    # from the start, whatever is there
  torchrun --nproc_per_node 4 scripts/train_fold.py --config x.yaml --fold 0   # one fold on 4 GPUs
"""

from .. import cli


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--fold", required=True, help="fold number, or 'all'")
    p.add_argument("--resume", action="store_true",
                   help="carry on from the last finished epoch of an interrupted run (what train does anyway)")
    p.add_argument("--restart", action="store_true",
                   help="train from the start, discarding a finished fold or an interrupted run's checkpoint")
    args = p.parse_args(argv)
    if args.resume and args.restart:
        p.error("--resume and --restart contradict each other: give one")
    experiment = cli.experiment(args)
    folds = cli.parse_fold_spec(args.fold, experiment.config.n_folds)
    from ..training.train import train_folds

    train_folds(experiment, folds, restart=args.restart)

