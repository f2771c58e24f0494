"""Run the whole pipeline for one config: preprocess → folds → train every fold → ensemble → submission CSV.

The same as ``retinopathy pipeline``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.pipeline import main

if __name__ == "__main__":
    cli.run(main)
