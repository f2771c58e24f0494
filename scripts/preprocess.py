"""Find the eye, crop, normalise and resize every training and test image once, into
data/processed/<dataset>/<method>-<size>/ with a manifest.csv. Resumable; all cores by default.

The same as ``retinopathy preprocess``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.preprocess import main

if __name__ == "__main__":
    cli.run(main)
