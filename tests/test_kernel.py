"""The code-competition path (APTOS): build the kernel's dataset and script, push and submit them with the real
kaggle client (in a subprocess) to the fake Kaggle server, then run the generated kernel for real, offline, in a
fresh environment that has the dependencies but not this library, on test ids the models never saw."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_script, runtime_without_library, tiny_pipeline
from runtimes import offline_env
from fake_kaggle import FakeCompetition, FakeKaggle
from retinopathy.data.synthetic import make_competition

APTOS = "aptos2019-blindness-detection"
DATASET, KERNEL = "tester/kernel-demo-folds", "tester/kernel-demo-run"


@pytest.fixture(scope="module")
def trained(tiny_aptos, tmp_path_factory):
    """A tiny trained APTOS experiment (2 folds, TTA on) in its own working folder."""
    work = tmp_path_factory.mktemp("kernel-work")
    experiment, _ = tiny_pipeline(tiny_aptos, work, "kernel-demo", "tta=true")
    return work, experiment


@pytest.fixture
def server():
    fake = FakeKaggle(pending_polls=1, processing_polls=1).start()
    fake.competitions[APTOS] = FakeCompetition(files={})
    yield fake
    fake.stop()


def kernel_command(work, experiment, server, *extra, key=None):
    home = work / "home"
    home.mkdir(exist_ok=True)
    return run_script("kernel.py", "--config", str(experiment.dir / "config.yaml"), "--dataset", DATASET,
                      "--kernel", KERNEL, "--poll", "0.05", *extra, cwd=work,
                      env=server.client_env(home, key) if server else None)


def sample_submission(raw: Path) -> bytes:
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str)
    return sample.assign(diagnosis=[i % 5 for i in range(len(sample))]).to_csv(index=False).encode()


@pytest.fixture(scope="module")
def built(trained):
    """The kernel's folders, built once (no push)."""
    work, experiment = trained
    had_build = (REPO / "build").exists()
    done = kernel_command(work, experiment, None, "--no-push")
    assert done.returncode == 0, done.stderr
    assert (REPO / "build").exists() == had_build, "building the wheel leaves no build/ in the checkout"
    return work, experiment, done.stdout


def test_build_writes_a_dataset_and_an_offline_script_kernel(built):
    work, experiment, stdout = built
    base = work / "kaggle" / "kernel-demo"
    meta = json.loads((base / "dataset" / "dataset-metadata.json").read_text())
    assert meta["id"] == DATASET and len(meta["licenses"]) == 1 and 6 <= len(meta["title"]) <= 50
    wheels = sorted(p.name for p in (base / "dataset" / "wheels").iterdir())
    assert len(wheels) == 1 and wheels[0].startswith("retinopathy-"), "Kaggle's image has the rest: " + str(wheels)
    folds = sorted((base / "dataset" / "models" / "kernel-demo").glob("fold*/export.pkl"))
    assert len(folds) == 2 and (base / "dataset" / "models" / "kernel-demo" / "tuning.json").is_file()
    kernel = json.loads((base / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["kernel_type"] == "script" and kernel["enable_internet"] is False and kernel["is_private"]
    assert kernel["competition_sources"] == [APTOS] and kernel["dataset_sources"] == [DATASET]
    assert kernel["enable_gpu"] is False
    script = (base / "kernel" / kernel["code_file"]).read_text()
    assert '"--no-index"' in script and f'DATASET = "{DATASET}"' in script and "__DATASET__" not in script
    assert "13,000 test images" in stdout and "per 1,000 images on this machine" in stdout


def test_push_submit_then_run_the_kernel_offline_on_unseen_ids(built, server, tiny_aptos, tmp_path):
    work, experiment, _ = built
    server.kernel_output = {"submission.csv": sample_submission(tiny_aptos)}
    first = kernel_command(work, experiment, server, "--no-build", "--submit", "-m", "tiny kernel")
    assert first.returncode == 0, first.stderr
    assert "dataset tester/kernel-demo-folds: created" in first.stdout and "public score: 0.812" in first.stdout
    assert "version 1 pushed" in first.stdout and "valid (10 rows)" in first.stdout
    push = server.kernels[KERNEL]["versions"][0]
    assert push["enableInternet"] is False and push["kernelType"] == "script"
    assert push["datasetDataSources"] == [DATASET] and push["competitionDataSources"] == [APTOS]
    code = server.submissions[-1]
    assert (code["kernel"], code["kernelVersion"], code["fileName"]) == (KERNEL, 1, "submission.csv")

    second = kernel_command(work, experiment, server, "--no-build")
    assert second.returncode == 0, second.stderr
    assert "dataset tester/kernel-demo-folds: new version" in second.stdout and "version 2 pushed" in second.stdout
    assert len(server.datasets[DATASET]["versions"]) == 2

    # Kaggle mounts the dataset as uploaded (folders as zip archives), beside a competition with other test ids.
    root = tmp_path / "input"
    (root / "kernel-demo-folds").mkdir(parents=True)
    for name, data in server.datasets[DATASET]["versions"][-1]["files"].items():
        (root / "kernel-demo-folds" / name).write_bytes(data)
    assert {"wheels.zip", "models.zip", "retinopathy-bundle.json"} <= set(os.listdir(root / "kernel-demo-folds"))
    rerun = make_competition(root / APTOS, "aptos2019", n_train=10, n_test=14, seed=99, max_side=160, workers=1,
                             progress=False)
    unseen = pd.read_csv(rerun / "sample_submission.csv", dtype=str)["id_code"]
    blank = rerun / "test_images" / f"{unseen[0]}.png"  # a photograph that cannot be graded: still a row
    assert cv2.imwrite(str(blank), np.zeros((160, 160, 3), np.uint8))
    trained_ids = set(pd.read_csv(tiny_aptos / "train.csv", dtype=str)["id_code"]) | \
        set(pd.read_csv(tiny_aptos / "test.csv", dtype=str)["id_code"])
    assert not set(unseen) & trained_ids
    venv = runtime_without_library(tmp_path)
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import retinopathy"], capture_output=True).returncode != 0
    out = tmp_path / "working"
    out.mkdir()
    script = next((work / "kaggle" / "kernel-demo" / "kernel").glob("*.py"))
    done = subprocess.run([python, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=offline_env(RETINOPATHY_KERNEL_INPUT=str(root), RETINOPATHY_KERNEL_OUTPUT=str(out)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "test images: 1 of 14 photographs not gradable (no eye found" in done.stdout, done.stdout[-2000:]
    submission = pd.read_csv(out / "submission.csv", dtype=str)
    assert submission["id_code"].tolist() == unseen.tolist()
    assert submission["diagnosis"].isin(list("01234")).all()
    installed = subprocess.run([python, "-m", "pip", "show", "retinopathy"], capture_output=True, text=True,
                               env=offline_env())
    assert str(venv) in installed.stdout, "the library was installed into the kernel's environment from the wheels"


@pytest.mark.parametrize("fault, message", [
    ("key", "401 Unauthorized"),
    ("rules", "403 Forbidden"),
    ("competition", "404 Not Found"),
    ("error", "ended with error: ModuleNotFoundError: No module named 'x'"),
])
def test_push_failures_are_one_line(built, server, fault, message):
    work, experiment, _ = built
    server.kernel_output = {}
    if fault == "rules":
        server.competitions[APTOS].rules_accepted = False
    if fault == "competition":
        del server.competitions[APTOS]
    if fault == "error":
        server.kernel_outcome, server.kernel_failure = "ERROR", "ModuleNotFoundError: No module named 'x'\n  at line 3"
    done = kernel_command(work, experiment, server, "--no-build", "--submit", "-m", "x",
                          key="wrong-key" if fault == "key" else None)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_the_kernel_refuses_a_csv_competition_and_bad_names(built, tiny_eyepacs):
    work, experiment, _ = built
    done = run_script("kernel.py", "--config", str(experiment.dir / "config.yaml"), "--dataset", "tester/x",
                      "--kernel", KERNEL, "--no-push", cwd=work)
    assert done.returncode == 2 and "--dataset 'tester/x'" in done.stderr and done.stderr.count("\n") == 1
    eyepacs = run_script("kernel.py", "--config", str(experiment.dir / "config.yaml"), "--raw-dir",
                         str(tiny_eyepacs), "--dataset", DATASET, "--kernel", KERNEL, "--no-push", "--any-export",
                         cwd=work)
    assert eyepacs.returncode == 2 and "takes CSV submissions" in eyepacs.stderr
