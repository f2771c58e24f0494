"""Decode every image of a competition folder in full (a truncated JPEG is caught), cross-check the label CSV
against the images, and move bad images to <folder>/quarantine/ with quarantine/report.csv saying why. Nothing is
deleted. Exit status 1 when anything was found, so it can gate a script.

The same as ``retinopathy verify``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.verify import main

if __name__ == "__main__":
    cli.run(main)
