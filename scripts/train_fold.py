"""Train one fold (or all) with fastai; writes models/<exp>/fold<K>/ (export.pkl, oof.csv, history.csv, loss.png,
config.yaml). Run one process per fold on a multi-GPU box, or --fold all one after another.

  python scripts/train_fold.py --config configs/demo.yaml --fold 0
  python scripts/train_fold.py --config configs/demo.yaml --fold all epochs=10 arch=resnet34
"""

from retinopathy import cli
from retinopathy.train import train_folds


def main() -> None:
    p = cli.parser(__doc__, config_default="configs/demo.yaml")
    p.add_argument("--fold", required=True, help="fold number, or 'all'")
    cli.data_args(p)
    args = p.parse_args()
    train_folds(cli.experiment(args), args.fold)


if __name__ == "__main__":
    cli.run(main)
