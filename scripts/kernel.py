"""Submit to a code competition (APTOS 2019) through an offline Kaggle kernel: build its dataset and kernel
folders, push them with the official client, wait for the run, and with --submit submit it and wait for the score.

The same as ``retinopathy kernel``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.kernel import main

if __name__ == "__main__":
    cli.run(main)
