"""Submit to a code competition (APTOS 2019) through an offline Kaggle kernel. Builds kaggle/<exp>/dataset/ (the
library's wheel, any wheel Kaggle's image lacks, the trained folds, tuning.json, the config) and kaggle/<exp>/kernel/
(a private script kernel, internet off, the competition and the dataset attached), prints how long the kernel will
take on 13,000 test images, then creates or versions the dataset, pushes the kernel, waits for its run, fetches and
validates its submission.csv, and with --submit submits that kernel version and waits for the score.

  retinopathy kernel --config aptos_cpu --dataset you/aptos-folds --kernel you/aptos-kernel
  retinopathy kernel --config aptos_cpu --dataset you/aptos-folds \\
      --kernel you/aptos-kernel --submit -m "resnet18 5 folds"
  retinopathy kernel --config debug --dataset you/debug-folds --kernel you/debug-kernel --no-push  # folders only
  retinopathy kernel --config aptos_gpu --dataset you/aptos-folds --kernel you/aptos-pl --gpu --pseudo-label

--pseudo-label: the kernel grades the test set it is given (the private one when Kaggle reruns it), writes that
submission, then fine-tunes every fold from its own weights for --pseudo-epochs on its training part plus the graded
test images (soft scores for regression heads, confident grades for classifiers; never validation), tunes the
thresholds on the new out-of-fold outputs and grades again; that submission replaces the first only where every
fold finished within --pseudo-minutes of the kernel's start and the out-of-fold QWK did not drop. Kaggle stops the
kernel at 9 hours (CPU or GPU, internet off).
"""

from pathlib import Path

from .. import cli
from ..inference.engines import ENGINE_HELP, ENGINES
from ..kernel.build import DEFAULT_GPU, GPU_SHAPES, PseudoLabels


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--dataset", required=True, help="the Kaggle dataset to create or version: OWNER/SLUG")
    p.add_argument("--kernel", required=True, help="the Kaggle kernel to push: OWNER/SLUG")
    p.add_argument("--engine", choices=list(ENGINES), default="torch",
                   help="how the kernel runs the folds: " + ENGINE_HELP + " (default torch)")
    p.add_argument("--gpu", nargs="?", const=DEFAULT_GPU, default=None, metavar="MACHINE",
                   help="run the kernel on a Kaggle GPU machine: "
                        f"{'; '.join(f'{k}: {v}' for k, v in GPU_SHAPES.items())}"
                        f" (default {DEFAULT_GPU}); the torch engine grades there in float16")
    p.add_argument("--no-push", action="store_true", help="write the folders and stop")
    p.add_argument("--no-build", action="store_true", help="push the folders an earlier build wrote, as they are")
    p.add_argument("--submit", action="store_true", help="submit the pushed kernel version once it has run")
    p.add_argument("-m", "--message", help="the submission's description (with --submit)")
    p.add_argument("--out", type=Path, default=Path("kaggle"), help="where to write the folders (default kaggle/)")
    p.add_argument("--poll", type=cli.number_in(0.01, 3600, float), default=30.0,
                   help="seconds between status checks (default 30)")
    p.add_argument("--timeout", type=cli.number_in(1, 86_400, float), default=9 * 3600.0,
                   help="stop waiting after this many s (default 9 h)")
    p.add_argument("--pseudo-label", action="store_true",
                   help="the kernel also fine-tunes the folds on the test images it graded, then grades again")
    p.add_argument("--pseudo-epochs", type=int, default=PseudoLabels.epochs,
                   help=f"epochs of that fine-tuning per fold (default {PseudoLabels.epochs})")
    p.add_argument("--pseudo-minutes", type=float, default=PseudoLabels.minutes,
                   help=f"the kernel's time budget: no fold is fine-tuned past this many minutes from its start "
                        f"(default {PseudoLabels.minutes:.0f}; Kaggle stops it at 9 h)")
    p.add_argument("--any-export", action="store_true",
                   help="bundle folds even where they were not trained with the given config's model settings")
    p.add_argument("--accept-disagreement", action="store_true",
                   help="bundle an exported engine even where its export found it grading unlike PyTorch on more "
                        "than 1 %% of the validation images")
    args = p.parse_args(argv)
    if args.submit and not args.message:
        p.error("--submit needs -m/--message, the submission's description")
    experiment = cli.experiment(args)
    from ..competitions import read_test_ids
    from ..inference.offline import describe_speed
    from ..kernel.build import build_kernel, existing_build

    if args.no_build:
        build = existing_build(experiment, args.dataset, args.kernel, args.out)
    else:
        from ..inference.engines import check_agreement

        check_agreement([experiment.fold_dir(k) / ENGINES[args.engine].model_file for k in experiment.trained_folds()],
                        args.accept_disagreement)
        pseudo = PseudoLabels(args.pseudo_epochs, args.pseudo_minutes) if args.pseudo_label else None
        build = build_kernel(experiment, args.dataset, args.kernel, args.engine, args.gpu, args.out,
                             any_export=args.any_export, pseudo=pseudo)
    print(f"dataset folder: {build.dataset_dir} (installs {' '.join(build.packages)})")
    print(f"kernel folder:  {build.kernel_dir}")
    if build.seconds_per_image is not None:
        print(f"kernel speed: {describe_speed(build.seconds_per_image, gpu=args.gpu)}")
    if build.pseudo:
        print(f"second stage: every fold fine-tuned for {build.pseudo.epochs} epoch(s) on its training part and the "
              f"graded test images, within {build.pseudo.minutes:.0f} min of the kernel's start (the first stage's "
              "submission stays if it cannot finish)")
    if args.no_push:
        print("not pushed (--no-push): kaggle datasets create -p <dataset folder> --dir-mode zip, then "
              "kaggle kernels push -p <kernel folder>, or run this again without --no-push")
        return
    from ..kernel.push import push

    result = push(build, experiment.competition, read_test_ids(experiment.raw_dir, experiment.competition),
                  args.out / experiment.config.name / "output", args.message if args.submit else None,
                  args.poll, args.timeout)
    score = result.get("score")
    if score and score["status"] == "COMPLETE":
        print(f"public score: {score['public_score']}")
