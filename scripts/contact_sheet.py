"""A before/after contact sheet PNG of preprocessing: each image's original with the eye found drawn in green, then
every method (none, crop, ben, clahe), so a person can check the crop at a glance.

The same as ``retinopathy contact-sheet``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.contact_sheet import main

if __name__ == "__main__":
    cli.run(main)
