"""Train one fold (or all) with fastai; writes models/<exp>/fold<K>/ (export.pkl, oof.csv, history.csv, loss.png,
config.yaml). Run one process per fold on a multi-GPU box, or --fold all one after another.

The same as ``retinopathy train``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.train import main

if __name__ == "__main__":
    cli.run(main)
