"""Decode every image of a competition folder in full (a truncated JPEG is caught), cross-check the label CSV
against the images, and move bad images to <folder>/quarantine/ with quarantine/report.csv saying why. Nothing is
deleted. Exit status 1 when anything was found, so it can gate a script.

  retinopathy verify --competition aptos2019
  retinopathy verify --config debug --dry-run              # report only, move nothing
"""

import sys

from .. import cli
from ..data.verify import verify_dataset


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="report bad images without moving them")
    args = p.parse_args(argv)
    raw_dir = cli.experiment(args).raw_dir  # the config's competition folder, or --competition's, or --raw-dir
    report = verify_dataset(raw_dir, None, workers=args.workers, move_bad=not args.dry_run)
    for line in report.lines():
        print(f"verify: {line}")
    print(f"{raw_dir}: {'clean' if report.clean else 'problems found (see above)'}")
    if not report.clean:
        sys.exit(1)

