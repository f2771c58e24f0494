"""Environments like the ones users run in, made cheaply for tests: a fresh virtual environment that sees an
existing environment's packages (torch, fastai, … as a Kaggle or Colab image has them) but not this library."""

import os
import subprocess
import sys
from pathlib import Path


def runtime_without_library(tmp_path: Path, python: str = sys.executable) -> Path:
    """A fresh venv whose path holds links to every package of ``python``'s environment except retinopathy (and
    its editable-install hooks): the library can be installed into it for real, and pip sees the rest as installed
    elsewhere, so it never replaces them."""
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    mirror = tmp_path / "image-packages"
    mirror.mkdir(parents=True)
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("retinopathy", "__editable__", "_retinopathy")) or name.endswith(".pth"):
            continue
        (mirror / entry.name).symlink_to(entry)
    venv = tmp_path / "runtime"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    runtime_site = next((venv / "lib").glob("python3*/site-packages"))
    (runtime_site / "kaggle-image.pth").write_text(str(mirror) + "\n")
    return venv


def offline_env(**extra) -> dict:
    """No index, no configured find-links, no proxy that leads anywhere: pip can reach nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", PYTHONNOUSERSITE="1", **extra)
    return env


def rerun_competition(train_from: Path, dest: Path, n_test: int, seed: int) -> Path:
    """A competition folder as Kaggle mounts it when it reruns a kernel: ``train_from``'s labelled training images
    (links) beside a test set of ``n_test`` images no model saw (synthetic, ``seed``)."""
    import shutil

    from retinopathy.data.synthetic import make_competition

    folder = make_competition(dest, "aptos2019", n_train=4, n_test=n_test, seed=seed, max_side=160, workers=1,
                              progress=False)
    shutil.rmtree(folder / "train_images")
    (folder / "train_images").symlink_to(Path(train_from, "train_images").resolve(), target_is_directory=True)
    shutil.copyfile(Path(train_from, "train.csv"), folder / "train.csv")
    return folder
