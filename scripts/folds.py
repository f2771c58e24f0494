"""Write the folds CSV (id, grade, fold): stratified on the grade; for EyePACS both eyes of a patient share a fold.

The same as ``retinopathy folds``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.folds import main

if __name__ == "__main__":
    cli.run(main)
