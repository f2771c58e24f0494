"""Interpret a trained experiment from its out-of-fold predictions: reports/<exp>/ gets the top losses and the
least sure images, the confusion matrix with per-grade precision and recall, every fold's training curves with a
diagnosis (under-fitting, over-fitting, learning rate too high), lr_find plots, and index.html tying them together.

The same as ``retinopathy interpret``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.interpret import main

if __name__ == "__main__":
    cli.run(main)
