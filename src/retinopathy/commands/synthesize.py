"""Write a synthetic competition in Kaggle layout (fundus-like images whose lesions follow the grade).

  retinopathy synthesize data/raw/synthetic-eyepacs --competition eyepacs2015 --n-train 30 --n-test 10
"""

from .. import cli


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__, overrides=False)  # --competition: whose layout (default: the config's competition)
    p.add_argument("out_dir")
    cli.add_overrides(p)
    p.add_argument("--n-train", type=cli.number_in(5, 1_000_000), default=200, help="labelled images (default 200)")
    p.add_argument("--n-test", type=cli.number_in(0, 1_000_000), default=50, help="test images (default 50)")
    p.add_argument("--seed", type=cli.number_in(0, 2**32 - 1), default=0)
    p.add_argument("--max-side", type=cli.number_in(64, 8192), default=512, help="largest image side in pixels")
    args = p.parse_args(argv)
    from ..data.synthetic import make_competition

    competition = args.competition or cli.resolve(args)[0].competition
    out = make_competition(args.out_dir, competition, args.n_train, args.n_test, args.seed, args.max_side)
    print(f"synthetic competition written to {out}")

