"""Provenance and faults: every model knows the settings that made it, a resumed fold exports what an uninterrupted
one would, faults are one line, nothing is lost, and a killed stage resumes where it stopped."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retinopathy.config import load_config
from retinopathy.data.folds import make_folds
from retinopathy.experiment import Experiment
from retinopathy.paths import Paths
from retinopathy.preprocessing.stage import preprocess

from conftest import REPO, child_processes, debug_config, process_alive, run_script, trained_in


# ----------------------------------------------------------------------------------------- the fingerprint
def test_fingerprint_ignores_runtime_settings_and_the_path_to_the_data(tiny_aptos, tmp_path):
    config = debug_config(tiny_aptos, "a")
    link = tmp_path / "elsewhere"
    link.mkdir()
    (link / tiny_aptos.name).symlink_to(tiny_aptos)
    same = config.replace(name="b", tta=True, num_workers=3, mixed_precision=False, lr_find="plot",
                          raw_dir=str(link / tiny_aptos.name))
    assert same.fingerprint == config.fingerprint
    for change in ({"arch": "resnet34"}, {"epochs": 2}, {"image_size": 64}, {"seed": 1}, {"head": "regression"},
                   {"lr_find": "pick"}, {"preprocess": "crop"}, {"augment": False}):
        assert config.replace(**change).fingerprint != config.fingerprint, change


@pytest.fixture(scope="module")
def trained(tiny_aptos, tmp_path_factory):
    """A tiny experiment trained by the pipeline, and what a user's shell needs to reach it."""
    return trained_in(tiny_aptos, tmp_path_factory.mktemp("provenance"), "prov")


def test_every_artefact_names_its_fingerprint(trained):
    experiment, work, _ = trained
    fingerprint = experiment.config.fingerprint
    for fold in (0, 1):
        record = json.loads((experiment.fold_dir(fold) / "fingerprint.json").read_text())
        assert record["fingerprint"] == fingerprint and record["settings"]["arch"] == "resnet10t"
    assert json.loads((experiment.dir / "tuning.json").read_text())["fingerprint"] == fingerprint
    sidecar = json.loads(experiment.submission.with_suffix(".json").read_text())
    assert sidecar["fingerprints"] == [fingerprint] and sidecar["models"] == 2
    assert pd.read_csv(work / "reports" / "results.csv")["fingerprint"].tolist()[-1] == fingerprint


def test_runtime_settings_never_retrain(trained, capsys):
    from retinopathy.pipeline import run_pipeline

    experiment, _, _ = trained
    exports = {k: experiment.fold_dir(k) / "export.pkl" for k in (0, 1)}
    before = {k: p.stat().st_mtime_ns for k, p in exports.items()}
    changed = experiment.config.replace(tta=True, num_workers=0, mixed_precision=False, lr_find="plot")
    run_pipeline(changed, experiment.paths)
    assert capsys.readouterr().out.count("up to date") == 2
    assert {k: p.stat().st_mtime_ns for k, p in exports.items()} == before


@pytest.mark.slow  # three script runs
def test_predict_refuses_folds_trained_otherwise(trained):
    experiment, work, env = trained
    config = str(experiment.dir / "config.yaml")
    refused = run_script("predict.py", "--config", config, "arch=resnet50", "epochs=7", cwd=work, env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "fold0/export.pkl: made with arch=resnet10t epochs=1, asked for arch=resnet50 epochs=7" in refused.stderr
    assert "--any-export" in refused.stderr
    rows = len(pd.read_csv(work / "reports" / "results.csv"))
    anyway = run_script("predict.py", "--config", config, "arch=resnet50", "epochs=7", "--any-export", cwd=work,
                        env=env)
    assert anyway.returncode == 0, anyway.stderr
    assert len(pd.read_csv(work / "reports" / "results.csv")) == rows + 1
    served = run_script("serve.py", "--config", config, "epochs=7", "--port", "1", cwd=work, env=env)
    assert served.returncode == 2 and "asked for epochs=7" in served.stderr and "serving" not in served.stdout


def test_a_config_mistake_leaves_the_previous_run_intact(trained):
    experiment, work, env = trained
    saved = experiment.dir / "config.yaml"
    before = saved.read_bytes()
    failed = run_script("train_fold.py", "--config", str(saved), "--fold", "0", "arch=resnet18x", cwd=work, env=env)
    assert failed.returncode == 2 and "unknown arch 'resnet18x'" in failed.stderr, failed.stderr
    assert saved.read_bytes() == before, "the config that re-runs the experiment is untouched"
    assert (experiment.fold_dir(0) / "export.pkl").is_file()


def _exported_fold_copy(experiment, tmp_path) -> Path:
    """Fold 0 exported to ONNX, its files copied to a folder of the test's own."""
    from retinopathy.inference.export import export_fold

    export_fold(experiment, 0, engines=("onnx",), verbose=False)
    fold = tmp_path / "exp" / "fold0"
    fold.mkdir(parents=True)
    for name in ("model.onnx", "config.yaml", "export.pkl", "fingerprint.json"):
        shutil.copy(experiment.fold_dir(0) / name, fold / name)
    return fold


def test_a_stale_onnx_file_is_refused(trained, tmp_path):
    from retinopathy.errors import UserError
    from retinopathy.inference.grader import Grader

    fold = _exported_fold_copy(trained[0], tmp_path)
    assert Grader([fold / "model.onnx"]).engine == "onnx", "an ONNX file knows what trained it"
    retrained = load_config(fold / "config.yaml", ["epochs=2"])
    retrained.save(fold / "config.yaml")  # the fold was trained again, its ONNX file was not exported again
    with pytest.raises(UserError, match="model.onnx: exported from a model trained with other settings"):
        Grader([fold / "model.onnx"])
    with pytest.raises(UserError, match="export.pkl: made with epochs=1, asked for epochs=2"):
        Grader([fold / "export.pkl"])
    assert Grader([fold / "model.onnx"], any_export=True).engine == "onnx"


def test_an_onnx_file_of_an_earlier_training_with_the_same_settings_is_refused(trained, tmp_path):
    from retinopathy.config import file_digest
    from retinopathy.errors import UserError
    from retinopathy.inference.grader import Grader

    fold = _exported_fold_copy(trained[0], tmp_path)
    assert Grader([fold / "model.onnx"]).engine == "onnx"
    with open(fold / "export.pkl", "ab") as f:  # the fold trained again with the very same config
        f.write(b"retrained")
    record = json.loads((fold / "fingerprint.json").read_text())
    (fold / "fingerprint.json").write_text(json.dumps({**record, "export": file_digest(fold / "export.pkl")}))
    with pytest.raises(UserError, match="model.onnx: exported from an earlier training of this fold"):
        Grader([fold / "model.onnx"])


# ----------------------------------------------------------------------------------------- resuming
def _experiment(raw, tmp_path, *overrides):
    experiment = Experiment(debug_config(raw, "r", *overrides), Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    return experiment


def _best_epoch_first(monkeypatch):
    """Make epoch 1 the best by QWK whatever the model learns (the validation QWK reads 0.9 in each fit's first
    epoch, 0.1 after), so that the last epoch's weights differ from the best's: the case an interrupted fold used to
    get wrong. The metric itself is replaced, so the tracker, the table and history.csv all see the same values;
    returns the callback that tells it the epoch."""
    from fastai.callback.core import Callback

    import retinopathy.training.models as models

    state = {"epoch": 0}

    class Epoch(Callback):
        def before_epoch(self):
            state["epoch"] = self.epoch

    monkeypatch.setattr(models, "output_kappa", lambda outputs, targets, head: 0.9 if state["epoch"] == 0 else 0.1)
    return Epoch()


def test_resume_after_the_last_epoch_exports_the_best(tiny_aptos, tmp_path, monkeypatch):
    import retinopathy.training.train as train
    from retinopathy.plots import plot_history

    epoch = _best_epoch_first(monkeypatch)
    whole = _experiment(tiny_aptos, tmp_path / "whole", "epochs=3")
    expected = train.train_fold(whole, 0, verbose=False, callbacks=[epoch])
    assert expected.best_epoch == 0

    cut = _experiment(tiny_aptos, tmp_path / "cut", "epochs=3")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill while the loss curve is drawn, after the last epoch

    monkeypatch.setattr(train, "plot_history", killed)
    with pytest.raises(KeyboardInterrupt):
        train.train_fold(cut, 0, verbose=False, callbacks=[epoch])
    assert not (cut.fold_dir(0) / "export.pkl").exists()
    monkeypatch.setattr(train, "plot_history", plot_history)
    resumed = train.train_fold(cut, 0, verbose=False, resume=True, callbacks=[epoch])
    ours = pd.read_csv(resumed.dir / "oof.csv")
    theirs = pd.read_csv(expected.dir / "oof.csv")
    assert np.allclose(ours[[f"prob_{g}" for g in range(5)]], theirs[[f"prob_{g}" for g in range(5)]], atol=1e-5), \
        "the resumed fold exports the best epoch's weights, as the uninterrupted run did"
    assert resumed.best_epoch == 0 and resumed.qwk == pytest.approx(expected.qwk)


def test_a_resumed_table_counts_on_from_where_it_stopped(tiny_aptos, tmp_path, capfd):
    from fastai.callback.core import Callback

    import retinopathy.training.train as train

    class CtrlC(Callback):
        order = 100

        def after_epoch(self):
            if self.epoch == 0:
                raise KeyboardInterrupt

    experiment = _experiment(tiny_aptos, tmp_path, "epochs=3")
    (experiment.fold_dir(0)).mkdir(parents=True, exist_ok=True)
    stale = experiment.fold_dir(0) / ".export.abcd.pkl.tmp"
    stale.write_bytes(b"left by a killed export")
    with pytest.raises(KeyboardInterrupt):
        train.train_fold(experiment, 0, verbose=False, callbacks=[CtrlC()])
    assert not stale.exists(), "a killed writer's temporary file is cleared"
    capfd.readouterr()
    train.train_fold(experiment, 0, verbose=False, resume=True)
    rows = [line.split()[0] for line in capfd.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert rows[:2] == ["2", "3"], rows  # counted from 1: epoch 1 was done before the interruption


# ----------------------------------------------------------------------------------------- faults, one line each
def _one_line(result, *words):
    """Exit 2, no traceback, and the last thing said is one ``error:`` line holding ``words`` (a progress bar may
    stand above it)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_a_file_where_the_data_folder_should_be(tiny_aptos, tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    result = run_script("preprocess.py", "--config", str(REPO / "configs" / "debug.yaml"), "--raw-dir",
                        str(tiny_aptos), "--data-dir", str(blocker / "inside"), cwd=tmp_path)
    _one_line(result, str(blocker), "a file stands where a folder is needed")
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1.5 MB tmpfs: a full disk for real (needs root, as in CI; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_outputs_stay_whole(tmp_path, tiny_disk):
    from PIL import Image

    from retinopathy.data.synthetic import make_competition

    raw = make_competition(tmp_path / "raw" / "big", "aptos2019", n_train=60, n_test=0, seed=3, max_side=600,
                           workers=1, progress=False)
    result = run_script("preprocess.py", "--config", str(REPO / "configs" / "debug.yaml"), "--raw-dir", str(raw),
                        "--data-dir", str(tiny_disk), "image_size=256", "preprocess=none", "--workers", "1",
                        cwd=tmp_path)
    _one_line(result, str(tiny_disk), "no space left on the device")
    written = list(tiny_disk.rglob("*.png"))
    assert written, "some images were written before the disk filled"
    for png in written:
        with Image.open(png) as im:
            im.load()  # every output that exists is whole


def test_a_full_disk_while_training_is_one_line_and_leaves_no_truncated_checkpoint(tiny_aptos, tmp_path, tiny_disk):
    data = tmp_path / "data"
    for stage in ("preprocess.py", "folds.py"):
        prepared = run_script(stage, "--config", str(REPO / "configs" / "debug.yaml"), "--raw-dir",
                              str(tiny_aptos), "--data-dir", str(data), cwd=tmp_path)
        assert prepared.returncode == 0, prepared.stderr
    result = run_script("train.py", "--config", str(REPO / "configs" / "debug.yaml"), "--raw-dir", str(tiny_aptos),
                        "--data-dir", str(data), "--fold", "0", "arch=resnet18", cwd=tmp_path,
                        env={"RETINOPATHY_OUTPUT_DIR": str(tiny_disk)})
    _one_line(result, "no space left on the device")
    for checkpoint in tiny_disk.rglob("*.pth"):
        import torch
        torch.load(checkpoint, weights_only=False)  # whatever stands there is whole


def test_a_read_only_file_system_is_one_line(tiny_aptos, tmp_path, tiny_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    result = run_script("preprocess.py", "--config", str(REPO / "configs" / "debug.yaml"), "--raw-dir",
                        str(tiny_aptos), "--data-dir", str(tiny_disk), cwd=tmp_path)
    _one_line(result, str(tiny_disk), "read-only file system")


# ----------------------------------------------------------------------------------------- killed preprocessing
@pytest.mark.slow  # a killed and a resumed preprocessing process
def test_preprocessing_survives_sigkill(tmp_path):
    from retinopathy.data.synthetic import make_competition

    raw = make_competition(tmp_path / "raw" / "kill", "aptos2019", n_train=120, n_test=0, seed=4, max_side=900,
                           workers=2, progress=False)
    args = [sys.executable, str(REPO / "scripts" / "preprocess.py"), "--config", str(REPO / "configs" / "debug.yaml"),
            "--raw-dir", str(raw), "--data-dir", str(tmp_path / "data"), "image_size=128", "--workers", "2"]
    out = tmp_path / "data" / "processed" / "kill" / "ben-128"
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / ".manifest.journal.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.is_file() and len(journal.read_text().splitlines()) >= 10):
        time.sleep(0.05)
    workers = child_processes(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers, "the stage ran worker processes"
    deadline = time.time() + 10
    while time.time() < deadline and any(process_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(process_alive(w) for w in workers), "worker processes die with the stage"
    assert not (out / "manifest.csv").exists(), "killed before the manifest was written"
    finished = {json.loads(line)["id"] for line in journal.read_text().splitlines()[:-1]}
    assert 10 <= len(finished) < 120
    kept = {i: (out / f"{i}.png").stat().st_mtime_ns for i in finished}

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert {i: (out / f"{i}.png").stat().st_mtime_ns for i in finished} == kept, "finished images are not redone"
    manifest = pd.read_csv(out / "manifest.csv", dtype={"id": str})
    labels = pd.read_csv(raw / "train.csv", dtype={"id_code": str})
    assert manifest["id"].tolist() == labels["id_code"].tolist() and (manifest["status"] == "ok").all()
    assert not journal.exists()


# ----------------------------------------------------------------------------------------- smaller
def test_outputs_get_the_process_umask(tmp_path):
    from retinopathy.files import write_text

    before = os.umask(0o027)
    try:
        probe = subprocess.run([sys.executable, "-c", "from retinopathy.files import write_text; import sys; "
                                "write_text(sys.argv[1], 'x')", str(tmp_path / "a.txt")], check=True)
    finally:
        os.umask(before)
    assert probe.returncode == 0 and stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    write_text(tmp_path / "b.txt", "y")
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o666 & ~before


def test_dry_run_says_nothing_was_moved(tiny_aptos, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_aptos, raw)
    victim = sorted((raw / "train_images").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    result = run_script("verify.py", "--raw-dir", str(raw), "--dry-run", cwd=tmp_path)
    assert "left in place (dry run: nothing recorded)" in result.stdout and "recorded in" not in result.stdout
    assert victim.is_file() and not (raw / "quarantine").exists()


def test_a_port_in_use_is_one_line_and_nothing_is_announced(trained):
    import socket

    experiment, work, env = trained
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("serve.py", "--model", str(experiment.fold_dir(0) / "export.pkl"), "--port", str(port),
                            cwd=work, env=env)
    _one_line(result, f"cannot listen on 127.0.0.1:{port}", "choose another --port")
    assert "serving" not in result.stdout


def test_rare_grades_are_noted_once(tiny_aptos, capsys, recwarn):
    from retinopathy.competitions import APTOS2019, read_labels
    from retinopathy.data.folds import assign_folds

    assign_folds(read_labels(tiny_aptos, APTOS2019), 4, seed=0, competition=APTOS2019)
    assert "fewer images than folds" in capsys.readouterr().out
    assert not [w for w in recwarn if "least populated class" in str(w.message)]
