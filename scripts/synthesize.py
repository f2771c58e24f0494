"""Write a synthetic competition in Kaggle layout (fundus-like images whose lesions follow the grade).

The same as ``retinopathy synthesize``; --help lists the options."""

from retinopathy import cli
from retinopathy.commands.synthesize import main

if __name__ == "__main__":
    cli.run(main)
