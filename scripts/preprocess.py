"""Find the eye, crop, normalise and resize every training and test image once, into
data/processed/<dataset>/<method>-<size>/ with a manifest.csv. Resumable; all cores by default.

  python scripts/preprocess.py --config configs/demo.yaml
  python scripts/preprocess.py --competition eyepacs2015 --method ben --size 512
"""

from retinopathy import cli
from retinopathy.preprocessing.fundus import METHODS


def main() -> None:
    p = cli.parser(__doc__, config_default="configs/demo.yaml")
    cli.data_args(p)
    p.add_argument("--method", choices=METHODS, help="none | crop | ben | clahe (the config's `preprocess`)")
    p.add_argument("--size", type=int, help="output side in pixels (the config's `image_size`)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = p.parse_args()
    from retinopathy.preprocessing.stage import preprocess

    preprocess(cli.experiment(args, preprocess=args.method, image_size=args.size), workers=args.workers)


if __name__ == "__main__":
    cli.run(main)
