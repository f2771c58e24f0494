"""Find the eye, crop, normalise and resize every training and test image once, into
data/processed/<dataset>/<method>-<size>/ with a manifest.csv. Resumable; all cores by default.

  python scripts/preprocess.py --config configs/demo.yaml
  python scripts/preprocess.py --raw-dir data/raw/diabetic-retinopathy-detection preprocess=ben image_size=512
"""

from retinopathy import cli
from retinopathy.pipeline import preprocess


def main() -> None:
    p = cli.parser(__doc__, config_default="configs/demo.yaml")
    p.add_argument("--raw-dir", help="a competition folder in Kaggle layout (default: data/raw/<dataset>)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = p.parse_args()
    preprocess(cli.experiment(args, raw_dir=args.raw_dir), workers=args.workers)


if __name__ == "__main__":
    cli.run(main)
