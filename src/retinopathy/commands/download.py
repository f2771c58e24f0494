"""Download a Kaggle competition with the official client, unpack it into data/raw/<competition>/ and verify
every image. Credentials: KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN, or ~/.kaggle/kaggle.json; accept the
competition's rules on kaggle.com first.

  retinopathy download --competition aptos2019
  retinopathy download --competition eyepacs2015 --files trainLabels.csv.zip sampleSubmission.csv.zip
  retinopathy download --competition eyepacs2015 --list

Running it again is safe: finished files are kept, an interrupted archive is fetched again, and a complete
folder costs no network at all.
"""

from .. import cli
from ..competitions import get_competition
from ..data.download import download, list_files
from ..data.verify import verify_dataset


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--files", nargs="+", metavar="NAME", help="fetch only these files of the competition")
    p.add_argument("--list", action="store_true", help="list the competition's files and sizes, fetch nothing")
    p.add_argument("--force", action="store_true", help="fetch again even what is already there")
    p.add_argument("--no-verify", action="store_true", help="skip decoding every image afterwards")
    args = p.parse_args(argv)
    if not args.competition:
        p.error("--competition is required: aptos2019 or eyepacs2015 (or the Kaggle slug)")
    competition = get_competition(args.competition)
    if args.list:
        for name, size in list_files(competition):
            print(f"{size / 2**20:12.1f} MB  {name}")
        return
    experiment = cli.experiment(args)
    raw_dir = experiment.raw_dir  # data/raw/<slug>, or --raw-dir
    fetched = download(competition, raw_dir, args.files, force=args.force)
    print(f"{competition.slug}: {'downloaded and unpacked' if fetched else 'up to date'} in {raw_dir}")
    if not args.no_verify and fetched and (raw_dir / competition.labels_csv).is_file():
        report = verify_dataset(raw_dir, competition,
                                record=experiment.paths.quarantine(experiment.config.dataset_name))
        for line in report.lines():
            print(f"verify: {line}")

