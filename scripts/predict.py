"""Predict the test set with every trained fold, average them, and write submissions/<exp>.csv (validated against
the sample submission). First: the CV report of the out-of-fold predictions, the post-processing tuned on them
(regression thresholds; for EyePACS, blending a patient's two eyes), and a row in reports/results.csv.

The same as ``retinopathy predict``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.predict import main

if __name__ == "__main__":
    cli.run(main)
