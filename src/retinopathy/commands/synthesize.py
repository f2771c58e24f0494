"""Write a synthetic competition in Kaggle layout (fundus-like images whose lesions follow the grade).

  retinopathy synthesize data/raw/synthetic-eyepacs --competition eyepacs2015 --n-train 30 --n-test 10
"""

import argparse



def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--competition", default="aptos2019", help="aptos2019 or eyepacs2015 (or the Kaggle slug)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-side", type=int, default=512, help="largest image side in pixels")
    args = p.parse_args(argv)
    from ..data.synthetic import make_competition

    out = make_competition(args.out_dir, args.competition, args.n_train, args.n_test, args.seed, args.max_side)
    print(f"synthetic competition written to {out}")

