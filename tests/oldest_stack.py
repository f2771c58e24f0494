"""`make test-oldest`: in an environment where the oldest supported torch stack was installed first and the
project after it, check that the install kept those releases and run the tiny pipeline end to end; then, as on
Kaggle, run a code-competition kernel built from folds trained on the developers' newer stack (``--trainer``)
offline on this older one.

  python tests/oldest_stack.py --trainer .venv/bin/python torch==2.9.1 torchvision==0.24.1 fastai==2.8.5 timm==1.0.3
"""

import argparse
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from runtimes import offline_env, runtime_without_library  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd, env=None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, text=True, capture_output=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def kernel_on_this_stack(trainer: Path, work: Path) -> str:
    """Folds trained by ``trainer``'s environment, the kernel built there, then run offline here."""
    from retinopathy.data.synthetic import make_competition

    newer = trainer.parent / "retinopathy"
    run([newer, "pipeline", "--config", "debug"], work)
    run([newer, "kernel", "--config", "debug", "--dataset", "you/debug-folds", "--kernel", "you/debug-kernel",
         "--no-push"], work)
    root = work / "input"
    root.mkdir()
    (root / "debug-folds").symlink_to(work / "kaggle" / "debug" / "dataset", target_is_directory=True)
    make_competition(root / "aptos2019-blindness-detection", "aptos2019", n_train=8, n_test=12, seed=7,
                     max_side=160, workers=1, progress=False)
    venv = runtime_without_library(work / "image", sys.executable)
    out = work / "working"
    out.mkdir()
    env = offline_env(RETINOPATHY_KERNEL_INPUT=str(root), RETINOPATHY_KERNEL_OUTPUT=str(out))
    script = next((work / "kaggle" / "debug" / "kernel").glob("*.py"))
    run([venv / "bin" / "python", script], work, env)
    rows = (out / "submission.csv").read_text().splitlines()
    if len(rows) != 13:
        sys.exit(f"the kernel wrote {len(rows) - 1} rows, not 12")
    return f"a kernel of folds trained on torch {trainer_torch(trainer)} ran offline here: 12 rows"


def trainer_torch(trainer: Path) -> str:
    return run([trainer, "-c", "import torch; print(torch.__version__)"], REPO).strip()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trainer", type=Path, help="the python of a newer environment to train the kernel's folds")
    p.add_argument("pins", nargs="+")
    args = p.parse_args()
    changed = [f"{pin} became {version(pin.split('==')[0])}" for pin in args.pins
               if version(pin.split("==")[0]) != pin.split("==")[1]]
    if changed:
        sys.exit("the project's install replaced the preinstalled stack: " + "; ".join(changed))
    command = Path(sys.executable).parent / "retinopathy"
    with tempfile.TemporaryDirectory() as work:
        run([command, "pipeline", "--config", "debug"], work)
        if not Path(work, "submissions", "debug.csv").is_file():
            sys.exit("the pipeline wrote no submission")
    print(f"oldest stack ({' '.join(args.pins)}): kept by the install, tiny pipeline passed")
    if args.trainer:
        with tempfile.TemporaryDirectory() as work:
            print(kernel_on_this_stack(Path(os.path.abspath(args.trainer)), Path(work)))


if __name__ == "__main__":
    main()
