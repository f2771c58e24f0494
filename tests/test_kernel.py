"""The code-competition path (APTOS): build the kernel's dataset and script, push and submit them with the real
kaggle client (in a subprocess) to the fake Kaggle server, then run the generated kernel for real, offline, in a
fresh environment that has the dependencies but not this library, on test ids the models never saw."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from retinopathy.data.synthetic import make_competition

from conftest import REPO, run_script, runtime_without_library, tiny_pipeline
from fake_kaggle import FakeCompetition, FakeKaggle
from runtimes import offline_env, rerun_competition

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
    assert "kernel [1/4] loading the 2 fold(s)" in stdout and "kernel [4/4] timing" in stdout, "progress"


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


@contextlib.contextmanager
def damaged(path: Path, content: bytes | None):
    """``path`` replaced by ``content`` (None: removed) for the block, then as it was."""
    kept = path.read_bytes()
    path.unlink() if content is None else path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(kept)


@pytest.mark.parametrize("fault, message", [
    ("missing fold", r"fold 1 of the config's 2 not trained .*: a kernel ships every fold"),
    ("truncated export", r"fold1/export.pkl: not a complete export"),
    ("no tuning", r"tuning.json missing or unreadable: run retinopathy predict"),
    ("other tuning", r"tuning.json was tuned on the outputs of other settings"),
])
def test_the_bundle_is_checked_before_anything_is_copied(built, tmp_path, fault, message):
    from retinopathy.errors import UserError
    from retinopathy.kernel.build import build_kernel

    work, experiment, _ = built
    export, tuning = experiment.fold_dir(1) / "export.pkl", experiment.dir / "tuning.json"
    path, content = {"missing fold": (export, None), "truncated export": (export, export.read_bytes()[:2000]),
                     "no tuning": (tuning, None),
                     "other tuning": (tuning, tuning.read_text().replace(experiment.config.fingerprint,
                                                                         "0" * 12).encode())}[fault]
    with damaged(path, content), pytest.raises(UserError, match=message) as refused:
        build_kernel(experiment, DATASET, KERNEL, root=tmp_path / "kaggle", measure=False)
    assert "\n" not in str(refused.value) and not (tmp_path / "kaggle").exists(), "refused before copying"


def test_no_build_refuses_a_bundle_whose_files_changed(built):
    from retinopathy.errors import UserError
    from retinopathy.kernel.build import existing_build

    work, experiment, _ = built
    copied = work / "kaggle" / "kernel-demo" / "dataset" / "models" / "kernel-demo" / "fold0" / "export.pkl"
    assert existing_build(experiment, DATASET, KERNEL, work / "kaggle").packages, "the bundle as built is taken"
    with damaged(copied, copied.read_bytes()[:1000]), pytest.raises(
            UserError, match="fold0/export.pkl: changed since the build: run without --no-build") as refused:
        existing_build(experiment, DATASET, KERNEL, work / "kaggle")
    assert "\n" not in str(refused.value)
    retuned = experiment.dir / "tuning.json"  # the experiment's own files moved on since the build
    with damaged(retuned, retuned.read_bytes().replace(b"{", b'{"rebuilt": 1, ', 1)), pytest.raises(
            UserError, match="holds other models than"):
        existing_build(experiment, DATASET, KERNEL, work / "kaggle")


def test_no_build_refuses_any_tampered_file_and_a_malformed_mark_in_one_line(built):
    from retinopathy.errors import UserError
    from retinopathy.kernel.build import existing_build

    work, experiment, _ = built
    base = work / "kaggle" / "kernel-demo"
    wheel = next((base / "dataset" / "wheels").glob("retinopathy-*.whl"))
    script = next((base / "kernel").glob("*.py"))
    bundled_config = base / "dataset" / "models" / "kernel-demo" / "fold0" / "config.yaml"
    cases = [(wheel, b"PK\x05\x06" + b"\0" * 18, "changed since the build"),
             (script, script.read_bytes() + b"\nprint('appended')\n", "changed since the build"),
             (bundled_config, bundled_config.read_bytes().replace(b"tta: true", b"tta: false"),
              "changed since the build"),
             (base / "dataset" / "retinopathy-bundle.json", b"{not json", "changed since the build"),
             (base / "build.json", b"[1, 2", "build.json: not readable JSON")]
    for path, content, message in cases:
        with damaged(path, content), pytest.raises(UserError, match=message) as refused:
            existing_build(experiment, DATASET, KERNEL, work / "kaggle")
        assert "\n" not in str(refused.value) and "no-build" in str(refused.value)
    extra = base / "dataset" / "models" / "kernel-demo" / "fold0" / "extra.pkl"
    extra.write_bytes(b"anything")
    try:
        with pytest.raises(UserError, match="extra.pkl: added since the build"):
            existing_build(experiment, DATASET, KERNEL, work / "kaggle")
    finally:
        extra.unlink()
    assert existing_build(experiment, DATASET, KERNEL, work / "kaggle").packages


def test_a_kaggle_reference_with_a_trailing_newline_is_refused():
    from retinopathy.errors import UserError
    from retinopathy.kernel.build import check_ref

    with pytest.raises(UserError, match="give OWNER/SLUG"):
        check_ref("me/slug\n", "kernel")
    assert check_ref("me/slug", "kernel") == "me/slug"


def test_a_killed_build_leaves_nothing_outside_the_folder_it_builds(built, tmp_path):
    """Every temporary file of a build (the source copy, pip's) lives in the folder being built, which the next
    build removes: killing it mid-wheel leaves nothing in the temporary directory."""
    work, experiment, _ = built
    scratch, out = tmp_path / "tmp", tmp_path / "kaggle"
    scratch.mkdir()
    build = subprocess.Popen([sys.executable, str(REPO / "scripts" / "kernel.py"), "--config",
                              str(experiment.dir / "config.yaml"), "--dataset", DATASET, "--kernel", KERNEL,
                              "--no-push", "--out", str(out)], cwd=work, env={**os.environ, "TMPDIR": str(scratch)},
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    building = out / "kernel-demo" / "dataset.building"
    deadline = time.time() + 120
    while not list(building.glob(".scratch/pip/*")) and build.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    assert building.is_dir() and not (out / "kernel-demo" / "dataset").exists(), "killed mid-build"
    assert list(scratch.iterdir()) == [], "the build wrote temporary files outside the folder it builds"


@pytest.fixture(scope="module")
def built_pseudo(tiny_aptos, tmp_path_factory):
    """A tiny regression experiment (the shipped recipes' head: soft pseudo-labels) and its kernel's folders with
    the in-kernel second stage (no push)."""
    work = tmp_path_factory.mktemp("kernel-pseudo-work")
    experiment, _ = tiny_pipeline(tiny_aptos, work, "kernel-pl", "head=regression")
    out = tmp_path_factory.mktemp("kaggle-pseudo")
    done = kernel_command(work, experiment, None, "--no-push", "--pseudo-label", "--pseudo-epochs", "1",
                          "--pseudo-minutes", "60", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "second stage: every fold fine-tuned for 1 epoch(s)" in done.stdout
    return out / "kernel-pl", experiment


@pytest.mark.slow
def test_the_pseudo_label_kernel_fine_tunes_every_fold_offline(built_pseudo, tiny_aptos, tmp_path):
    """The kernel built with --pseudo-label, run for real offline in a fresh environment on a test set no model
    saw: it grades, fine-tunes both folds on their training parts plus those test images (never validating on
    one), and writes a valid submission."""
    base, experiment = built_pseudo
    dataset = base / "dataset"
    mark = json.loads((dataset / "retinopathy-bundle.json").read_text())
    assert mark["pseudo_label"] == {"epochs": 1, "minutes": 60.0}
    bundled = dataset / "models" / "kernel-pl"
    assert {f"fold{k}/weights.pth" for k in (0, 1)} | {"folds.csv"} <= \
        {str(p.relative_to(bundled)) for p in bundled.rglob("*")}
    root = tmp_path / "input"
    root.mkdir()
    (root / "kernel-demo-folds").symlink_to(dataset, target_is_directory=True)
    rerun = rerun_competition(tiny_aptos, root / APTOS, n_test=12, seed=98)
    test_ids = set(pd.read_csv(rerun / "sample_submission.csv", dtype=str)["id_code"])
    venv = runtime_without_library(tmp_path)
    out = tmp_path / "working"
    out.mkdir()
    done = subprocess.run([str(venv / "bin" / "python"), str(next((base / "kernel").glob("*.py")))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env=offline_env(RETINOPATHY_KERNEL_INPUT=str(root), RETINOPATHY_KERNEL_OUTPUT=str(out)))
    log = done.stdout
    assert done.returncode == 0, log[-3000:] + done.stderr[-3000:]
    assert "pseudo-labels: fine-tuning 2 folds for 1 epoch(s)" in log, log[-3000:]
    assert "fold 0: 12 pseudo-labelled test images added to training (never validation)" in log, log[-3000:]
    assert ("submission from the fine-tuned folds" in log) != ("the first stage's submission stays" in log)
    folds = pd.read_csv(bundled / "folds.csv", dtype={"id": str})
    second = out / "retinopathy-work" / "models" / "kernel-pl-pseudo"
    import torch

    for k in (0, 1):
        oof = pd.read_csv(second / f"fold{k}" / "oof.csv", dtype={"id": str})
        assert not set(oof["id"]) & test_ids, "a test image in a validation part"
        assert set(oof["id"]) == set(folds.loc[folds["fold"] == k, "id"]), "each fold validates on its own rows"
        before = torch.load(bundled / f"fold{k}" / "weights.pth", weights_only=True)
        after = torch.load(second / f"fold{k}" / "weights.pth", weights_only=True)
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[n], after[n]) for n in before), f"fold {k} was not fine-tuned"
    for csv in (out / "submission.csv", out / "retinopathy-work" / "submissions" / "kernel-pl-pseudo.csv"):
        submission = pd.read_csv(csv, dtype=str)
        assert submission["id_code"].tolist() == pd.read_csv(rerun / "sample_submission.csv", dtype=str)[
            "id_code"].tolist()
        assert submission["diagnosis"].isin(list("01234")).all()


@pytest.mark.parametrize("case", ["out of time", "other training images"])
def test_the_second_stage_keeps_the_first_submission_when_it_cannot_finish(built_pseudo, tiny_aptos, tmp_path,
                                                                          case, capsys):
    from retinopathy.inference.offline import pseudo_label_offline

    base, _ = built_pseudo
    if case == "out of time":
        competition = rerun_competition(tiny_aptos, tmp_path / APTOS, n_test=6, seed=97)
    else:  # Kaggle attached another competition's (or version's) training images
        competition = make_competition(tmp_path / APTOS, "aptos2019", n_train=8, n_test=6, seed=96, max_side=160,
                                       workers=1, progress=False)
    out = tmp_path / "working"
    submission = pseudo_label_offline(base / "dataset" / "models", competition, out, epochs=1,
                                      minutes=0.001 if case == "out of time" else 60, workers=1)
    log = capsys.readouterr().out
    expected = "would end about" if case == "out of time" else "of the 40 training images the folds were trained on"
    assert expected in log and "the first stage's submission stays" in log, log[-2000:]
    assert not (out / "retinopathy-work" / "models" / "kernel-pl-pseudo" / "fold0" / "export.pkl").exists()
    rows = pd.read_csv(submission, dtype=str)
    assert len(rows) == 6 and rows["diagnosis"].isin(list("01234")).all()


def test_pseudo_label_settings_are_checked_before_anything_is_built(built, tmp_path):
    from retinopathy.errors import UserError
    from retinopathy.kernel.build import PseudoLabels, build_kernel

    work, experiment, _ = built
    for pseudo, engine, message in ((PseudoLabels(0), "torch", "--pseudo-epochs 0"),
                                    (PseudoLabels(2, 600), "torch", "Kaggle stops the kernel at 9 h"),
                                    (PseudoLabels(), "onnx", "use --engine torch")):
        with pytest.raises(UserError, match=message):
            build_kernel(experiment, DATASET, KERNEL, engine=engine, root=tmp_path / "kaggle", measure=False,
                         pseudo=pseudo)
    assert not (tmp_path / "kaggle").exists()


def test_two_builds_at_once_are_one_line(built, tmp_path):
    from retinopathy.errors import UserError
    from retinopathy.files import locked
    from retinopathy.kernel.build import build_kernel

    work, experiment, _ = built
    root = tmp_path / "kaggle"
    with locked(root / ".kernel-demo.build.lock", "a build"), pytest.raises(
            UserError, match=r"the kernel build in .* is in use by process \d+"):
        build_kernel(experiment, DATASET, KERNEL, root=root, measure=False, show=False)


def test_an_onnx_bundle_exported_before_a_retrain_is_refused(built, tmp_path):
    from retinopathy.errors import UserError
    from retinopathy.inference.export import export_fold
    from retinopathy.kernel.build import build_kernel

    work, experiment, _ = built
    for fold in (0, 1):
        export_fold(experiment, fold, engines=("onnx",), verbose=False)
    record = experiment.fold_dir(1) / "fingerprint.json"
    retrained = json.loads(record.read_text())
    retrained["export"] = "0" * 16  # fold 1 trained again since its ONNX file was exported
    with damaged(record, json.dumps(retrained).encode()), pytest.raises(
            UserError, match="fold1/model.onnx: exported from an earlier training of this fold"):
        build_kernel(experiment, DATASET, KERNEL, engine="onnx", root=tmp_path / "kaggle", measure=False, show=False)
