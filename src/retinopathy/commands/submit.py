"""Submit a submission CSV to Kaggle with the official client and wait for its public score. The file is
validated against the competition's sample submission first (ids, order, grades 0-4), so a bad file is refused
here rather than after an upload.

  retinopathy submit submissions/eyepacs.csv -m "resnet34 5 folds" --competition eyepacs2015
  retinopathy submit submissions/x.csv -m "..." --config x.yaml   # the competition from the config

APTOS 2019 takes no CSV (a code competition): submit it with retinopathy kernel.

The competition's sample submission must be in data/raw/<competition>/ (or --raw-dir).
"""

from pathlib import Path

import pandas as pd

from .. import cli
from ..competitions import read_test_ids
from ..data.kaggle_client import submit
from ..errors import UserError
from ..inference.submission import validate_submission


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__, overrides=False)
    p.add_argument("submission", type=Path, help="the CSV to submit")
    cli.add_overrides(p)
    p.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between score checks (default 10)")
    p.add_argument("--timeout", type=float, default=1800.0, help="stop waiting for the score after this many s")
    args = p.parse_args(argv)
    experiment = cli.experiment(args)
    competition = experiment.competition
    if competition.code_competition:
        raise UserError(f"{competition.slug} is a code competition: Kaggle accepts only the output of a kernel it "
                        "runs itself, not an uploaded CSV; submit with retinopathy kernel --dataset you/slug "
                        "--kernel you/slug --submit -m MESSAGE")
    if not args.submission.is_file():
        raise UserError(f"{args.submission}: file not found (retinopathy predict writes submissions/<exp>.csv)")
    sample_ids = read_test_ids(experiment.raw_dir, competition)
    if sample_ids is None:
        raise UserError(f"{experiment.raw_dir / competition.sample_submission} not found: it is needed to check the "
                        "file before sending it (download it with retinopathy download, or pass --raw-dir)")
    try:
        # every cell as written: one float in the column must not turn each grade into "2.0", naming the wrong row
        table = pd.read_csv(args.submission, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{args.submission}: not a readable CSV ({str(e).splitlines()[0]})") from None
    validate_submission(table, sample_ids, competition, str(args.submission))
    print(f"{args.submission}: valid ({len(table)} rows)")
    result = submit(args.submission, args.message, competition.slug, args.poll, args.timeout)
    if result["status"] == "COMPLETE":
        print(f"public score: {result['public_score']}")

