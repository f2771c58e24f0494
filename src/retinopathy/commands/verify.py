"""Decode every image of a competition folder in full (a truncated JPEG is caught), cross-check the label CSV
against the images, and move bad images to <folder>/quarantine/ with quarantine/report.csv saying why. Nothing is
deleted. Exit status 1 when anything was found, so it can gate a script.

  python scripts/verify_images.py --competition aptos2019
  python scripts/verify_images.py --raw-dir ../shared/data/eyepacs-sample
  python scripts/verify_images.py --raw-dir DIR --dry-run        # report only, move nothing
"""

import argparse
import sys
from pathlib import Path

from .. import cli
from ..competitions import get_competition
from ..data.verify import verify_dataset
from ..paths import Paths


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--competition", help="aptos2019 or eyepacs2015: verify data/raw/<slug>")
    where.add_argument("--raw-dir", type=Path, help="a competition folder in Kaggle layout")
    p.add_argument("--data-dir", help="data root (default: $RETINOPATHY_DATA_DIR or ./data)")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="report bad images without moving them")
    args = p.parse_args(argv)
    if args.competition:
        competition = get_competition(args.competition)
        raw_dir = Paths.default(data_dir=args.data_dir).raw(competition.slug)
    else:
        competition, raw_dir = None, args.raw_dir
    report = verify_dataset(raw_dir, competition, workers=args.workers, move_bad=not args.dry_run)
    for line in report.lines():
        print(f"verify: {line}")
    print(f"{raw_dir}: {'clean' if report.clean else 'problems found (see above)'}")
    if not report.clean:
        sys.exit(1)

