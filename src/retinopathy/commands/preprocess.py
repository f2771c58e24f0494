"""Find the eye, crop, normalise and resize every training and test image once, into
data/processed/<dataset>/<method>-<size>/ with a manifest.csv. Resumable; all cores by default.

  retinopathy preprocess --config debug
  retinopathy preprocess --competition eyepacs2015 --method ben --size 512
"""

from .. import cli
from ..preprocessing.fundus import METHODS


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--method", choices=METHODS, help=" | ".join(METHODS) + " (the config's `preprocess`)")
    p.add_argument("--size", type=cli.number_in(32, 2048),
                   help="output side in pixels, 32-2048 (the config's `image_size`)")
    cli.add_workers(p)
    args = p.parse_args(argv)
    from ..preprocessing.stage import preprocess

    preprocess(cli.experiment(args, preprocess=args.method, image_size=args.size), workers=args.workers)

