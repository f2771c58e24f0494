"""Download a Kaggle competition with the official client, unpack it into data/raw/<competition>/ and verify
every image. Credentials: KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN, or ~/.kaggle/kaggle.json; accept the
competition's rules on kaggle.com first.

The same as ``retinopathy download``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.download import main

if __name__ == "__main__":
    cli.run(main)
