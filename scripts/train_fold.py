"""Train one fold on one GPU, or on several under a launcher: how GPU users run it.

  python scripts/train_fold.py --config aptos_gpu --fold 0
  torchrun --nproc_per_node 4 scripts/train_fold.py --config aptos_gpu --fold 0

The command of ``retinopathy train`` (and scripts/train.py); --help lists the options."""

from retinopathy import cli
from retinopathy.commands.train import main

if __name__ == "__main__":
    cli.run(main)
