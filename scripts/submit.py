"""Submit a submission CSV to Kaggle with the official client and wait for its public score. The file is
validated against the competition's sample submission first (ids, order, grades 0-4), so a bad file is refused
here rather than after an upload.

The same as ``retinopathy submit``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.submit import main

if __name__ == "__main__":
    cli.run(main)
