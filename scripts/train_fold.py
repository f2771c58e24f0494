"""Train one fold (or all) with fastai: how GPU users run it (``torchrun ... scripts/train_fold.py``). The very
command of ``scripts/train.py`` and ``retinopathy train``; --help lists the options."""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("train.py")), run_name="__main__")
