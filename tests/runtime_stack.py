"""The runtimes users have (`runtimes/*.txt`, one pinned list each, Python version on its second line), tried as a
user would: the runtime's packages installed first, then the project (`pip install -e ".[train]"`), then a check that
pip kept every pinned release, the tiny pipeline at 64 px (and a fold trained from the packed store), `export-onnx`
(ONNX float32 and int8, each graded beside PyTorch), and the offline kernel built on that stack and run there with
no network (on Kaggle's, also a kernel built with --pseudo-label, which fine-tunes its folds there). With
``--trainer``, also a kernel whose folds were trained on a newer stack runs offline on this one (as on Kaggle).

  python tests/runtime_stack.py runtimes/kaggle.txt --trainer .venv/bin/python      # makes .venv-runtimes/kaggle

A runtime's environment holds a CUDA build of torch (PyPI has no other for Linux): 6 to 8 GB each. ``--discard``
(CI) installs without pip's cache and removes the environment once checked, so the runtimes never hold more than one
of them on disk at a time.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def read_runtime(path: Path) -> tuple[str, list[str]]:
    """(Python version, pins) of a runtime file."""
    text = Path(path).read_text()
    python = re.search(r"^# python: (\d+\.\d+)$", text, re.M).group(1)
    pins = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return python, pins


def find_python(version: str) -> str:
    """An interpreter of ``version``: on the PATH, else pyenv's."""
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python3")))]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    sys.exit(f"no Python {version} here (pyenv install {version}, or put python{version} on the PATH)")


def run(command: list, cwd, env=None) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, text=True, capture_output=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


# what one runtime's environment takes while it is made: the venv (6 to 8 GB) and the wheels pip unpacks
ENV_BYTES = 10 * 10**9


def check_disk(where: Path, needed: int = ENV_BYTES) -> None:
    """One line, before pip fills the disk halfway through an install."""
    free = shutil.disk_usage(where).free
    if free < needed:
        sys.exit(f"{where}: {free / 1e9:.1f} GB free, a runtime's environment needs about {needed / 1e9:.0f} GB "
                 f"(free some space, or remove .venv-runtimes/ and run with --discard)")


def make_env(runtime: Path, cache: bool = True) -> Path:
    """The runtime's environment: its pins installed first, then the project; made again only when the pins or
    the project's requirements change."""
    version, pins = read_runtime(runtime)
    venv = REPO / ".venv-runtimes" / runtime.stem
    stamp = hashlib.sha256((runtime.read_text() + (REPO / "pyproject.toml").read_text()).encode()).hexdigest()
    if (venv / ".stamp").is_file() and (venv / ".stamp").read_text() == stamp:
        return venv
    if venv.exists():
        shutil.rmtree(venv)  # an out-of-date environment frees its space before the new one is made
    venv.parent.mkdir(exist_ok=True)
    check_disk(venv.parent)
    run([find_python(version), "-m", "venv", "--clear", venv], REPO)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", *([] if cache else ["--no-cache-dir"])]
    run([*pip, "--upgrade", "pip"], REPO)
    run([*pip, *pins], REPO)  # the runtime as it comes
    run([*pip, "-e", ".[train]"], REPO)  # then the project, as its README says
    (venv / ".stamp").write_text(stamp)
    return venv


def kernel_offline(trainer_bin: Path, work: Path, runner_python: str, pseudo: bool = False) -> int:
    """Train the debug folds with ``trainer_bin``'s environment, build the kernel there, run it offline in a fresh
    environment that sees ``runner_python``'s packages but not the library; the submission's row count. ``pseudo``:
    a regression head and a kernel built with --pseudo-label, run beside the training images it was trained on
    (as Kaggle mounts them on a rerun), which must fine-tune every fold there."""
    from retinopathy.data.synthetic import make_competition

    from runtimes import offline_env, rerun_competition, runtime_without_library

    debug = ["--config", "debug", *(["head=regression"] if pseudo else [])]
    run([trainer_bin / "retinopathy", "pipeline", *debug], work)
    run([trainer_bin / "retinopathy", "kernel", *debug, "--dataset", "you/debug-folds", "--kernel",
         "you/debug-kernel", "--no-push", *(["--pseudo-label", "--pseudo-epochs", "1"] if pseudo else [])], work)
    root = work / "input"
    root.mkdir()
    (root / "debug-folds").symlink_to(work / "kaggle" / "debug" / "dataset", target_is_directory=True)
    competition = root / "aptos2019-blindness-detection"
    if pseudo:
        rerun_competition(work / "data" / "raw" / "synthetic-debug", competition, n_test=12, seed=7)
    else:
        make_competition(competition, "aptos2019", n_train=8, n_test=12, seed=7, max_side=160, workers=1,
                         progress=False)
    venv = runtime_without_library(work / "image", runner_python)
    out = work / "working"
    out.mkdir()
    env = offline_env(RETINOPATHY_KERNEL_INPUT=str(root), RETINOPATHY_KERNEL_OUTPUT=str(out))
    script = next((work / "kaggle" / "debug" / "kernel").glob("*.py"))
    run([venv / "bin" / "python", script], work, env)
    if pseudo:
        tuned = sorted((out / "retinopathy-work" / "models" / "debug-pseudo").glob("fold*/export.pkl"))
        if len(tuned) != 2:
            sys.exit(f"the pseudo-label kernel fine-tuned {len(tuned)} of the 2 folds")
    return len((out / "submission.csv").read_text().splitlines()) - 1


def check_inside(runtime: Path, trainer: Path | None) -> None:
    """In the runtime's environment: the pins kept, then every stage on the debug config."""
    from importlib.metadata import version

    _, pins = read_runtime(runtime)
    changed = [f"{pin} became {version(pin.split('==')[0])}" for pin in pins
               if version(pin.split("==")[0]) != pin.split("==")[1]]
    if changed:
        sys.exit(f"{runtime.stem}: the project's install replaced the runtime's packages: " + "; ".join(changed))
    here = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as work:
        # 64 px: the body's last feature map is larger than 1 x 1, where exporting fastai's adaptive max pooling
        # fails on torch before 2.13
        debug = ["--config", "debug", "image_size=64"]
        run([here / "retinopathy", "pipeline", *debug], work)
        if not Path(work, "submissions", "debug.csv").is_file():
            sys.exit(f"{runtime.stem}: the pipeline wrote no submission")
        run([here / "retinopathy", "export-onnx", *debug], work)
        worst = 0.0
        for report_file in sorted(Path(work, "models", "debug").glob("fold*/onnx.json")):
            report = json.loads(report_file.read_text())
            worst = max(worst, report["int8"]["max_abs_diff"])
            if report["onnx"]["grade_agreement"] < 1.0 or report["onnx"]["max_abs_diff"] > 1e-4:
                sys.exit(f"{runtime.stem}: {report_file}: ONNX disagrees with PyTorch: {report['onnx']}")
            # int8 moves outputs by a few hundredths; the debug model's near-uniform outputs make grades flip on
            # differences that small, so its outputs are compared, not its grades
            if not (report_file.parent / "model-int8.onnx").is_file() or report["int8"]["max_abs_diff"] > 0.05:
                sys.exit(f"{runtime.stem}: {report_file}: int8 disagrees with PyTorch: {report.get('int8')}")
        # the GPU configs' loader: the packed store, batches augmented by fastai's batch transforms
        store = [*debug, "loader=store", "augment_on=batch", "name=debug-store"]
        run([here / "retinopathy", "preprocess", *store], work)
        run([here / "retinopathy", "train", *store, "--fold", "0"], work)
        if not Path(work, "models", "debug-store", "fold0", "oof.csv").is_file():
            sys.exit(f"{runtime.stem}: a fold trained from the packed store wrote no out-of-fold predictions")
    with tempfile.TemporaryDirectory() as work:
        rows = kernel_offline(here, Path(work), sys.executable)
    lines = [f"{runtime.stem} ({' '.join(pins)}): kept by the install; pipeline, export-onnx (ONNX and int8 agree "
             f"with PyTorch: largest output difference {worst:.2g}), a fold trained from the packed store and the "
             f"offline kernel ({rows} rows) passed"]
    if runtime.stem == "kaggle":  # the runtime the kernel runs in: its second stage trains there too
        with tempfile.TemporaryDirectory() as work:
            rows = kernel_offline(here, Path(work), sys.executable, pseudo=True)
        lines.append(f"{runtime.stem}: the pseudo-label kernel fine-tuned both folds offline here: {rows} rows")
    if trainer:
        with tempfile.TemporaryDirectory() as work:
            rows = kernel_offline(trainer.parent, Path(work), sys.executable)
        lines.append(f"{runtime.stem}: a kernel of folds trained on the newest stack ran offline here: {rows} rows")
    print("\n".join(lines), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runtime", type=Path, help="a runtimes/*.txt file")
    p.add_argument("--trainer", type=Path, help="the python of a newer environment to train a kernel's folds")
    p.add_argument("--discard", action="store_true",
                   help="install without pip's cache and remove the environment once checked (CI)")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    runtime = args.runtime.resolve()
    trainer = Path(os.path.abspath(args.trainer)) if args.trainer else None
    if args.inside:
        check_inside(runtime, trainer)
        return
    try:
        venv = make_env(runtime, cache=not args.discard)
        command = [venv / "bin" / "python", __file__, runtime, "--inside"] + (["--trainer", trainer] if trainer else [])
        done = subprocess.run([str(c) for c in command], cwd=REPO)
    finally:
        if args.discard:
            shutil.rmtree(REPO / ".venv-runtimes" / runtime.stem, ignore_errors=True)
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
