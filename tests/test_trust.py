"""No answer that looks right and is not: ids that are paths, images that were never prepared, a moved data folder,
an ensemble named like an experiment, extra data that is the target itself."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from retinopathy.competitions import APTOS2019, read_labels, read_test_ids
from retinopathy.data.manifest import read_manifest_file
from retinopathy.errors import UserError
from retinopathy.experiment import Experiment
from retinopathy.paths import Paths
from retinopathy.preprocessing.stage import preprocess, preprocess_dataset

from conftest import debug_config, run_script, trained_in


@pytest.fixture(scope="module")
def trained(tiny_aptos, tmp_path_factory):
    return trained_in(tiny_aptos, tmp_path_factory.mktemp("trust"), "trust")


def _copy(raw, tmp_path, name="raw"):
    target = tmp_path / name
    shutil.copytree(raw, target)
    return target


@pytest.mark.parametrize("bad", ["../../escape", "/etc/passwd", "a/b", "..", "a\\b"])
def test_an_id_that_is_a_path_is_refused_in_one_line(tiny_aptos, tmp_path, bad):
    raw = _copy(tiny_aptos, tmp_path)
    labels = pd.read_csv(raw / "train.csv", dtype=str)
    labels.loc[3, "id_code"] = bad
    labels.to_csv(raw / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train\.csv, row 5: id_code .* holds a path"):
        read_labels(raw, APTOS2019)
    sample = pd.read_csv(tiny_aptos / "sample_submission.csv", dtype=str)
    sample.loc[0, "id_code"] = bad
    sample.to_csv(raw / "sample_submission.csv", index=False)
    with pytest.raises(UserError, match=r"sample_submission\.csv, row 2: id_code .* holds a path"):
        read_test_ids(raw, APTOS2019)


def test_a_raw_photo_named_by_an_absolute_id_is_never_overwritten(tiny_aptos, tmp_path):
    raw = _copy(tiny_aptos, tmp_path)
    victim = raw / "train_images" / f"{pd.read_csv(raw / 'train.csv', dtype=str)['id_code'][0]}.png"
    before = victim.read_bytes()
    labels = pd.read_csv(raw / "train.csv", dtype=str)
    labels.loc[1, "id_code"] = str(victim.with_suffix(""))
    labels.to_csv(raw / "train.csv", index=False)
    done = run_script("preprocess.py", "--raw-dir", str(raw), "--size", "32", "--data-dir", str(tmp_path / "data"),
                      cwd=tmp_path)
    assert done.returncode == 2 and "holds a path" in done.stderr and "Traceback" not in done.stderr
    assert victim.read_bytes() == before


def test_an_id_in_both_train_and_test_is_refused(tiny_aptos, tmp_path):
    raw = _copy(tiny_aptos, tmp_path)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str)
    sample.loc[0, "id_code"] = pd.read_csv(raw / "train.csv", dtype=str)["id_code"][0]
    sample.to_csv(raw / "sample_submission.csv", index=False)
    with pytest.raises(UserError, match="is in both train.csv and sample_submission.csv"):
        preprocess_dataset(raw, tmp_path / "out", "ben", 32, progress=False)


def test_test_images_added_after_preprocessing_are_not_called_unreadable(trained, tmp_path):
    experiment, work, env = trained
    (tmp_path / "elsewhere").mkdir()
    raw = _copy(experiment.raw_dir, tmp_path / "elsewhere", experiment.config.dataset_name)
    late = raw / "test_images" / "late0001.png"
    shutil.copy(next((raw / "test_images").iterdir()), late)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str)
    pd.concat([sample, pd.DataFrame({"id_code": ["late0001"], "diagnosis": ["0"]})]).to_csv(
        raw / "sample_submission.csv", index=False)
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    config = str(experiment.dir / "config.yaml")
    done = run_script("predict.py", "--config", config, "--raw-dir", str(raw), "--data-dir", str(data), cwd=work,
                      env=env)
    assert done.returncode == 2 and "1 test image(s) of sample_submission.csv were never prepared (e.g. 'late0001'" \
        in done.stderr and "could not be read" not in done.stdout


def test_a_moved_data_folder_reads_its_own_images(trained, tmp_path):
    experiment, work, _ = trained
    moved = tmp_path / "moved-data"
    shutil.copytree(work / "data", moved)
    manifest = read_manifest_file(Paths(data=moved, output=tmp_path).processed(
        experiment.config.dataset_name, experiment.config.preprocess, experiment.config.image_size))
    prepared = manifest.loc[manifest["path"] != "", "path"]
    assert len(prepared) == 50 and all(p.startswith(str(moved)) for p in prepared), "never the original's PNGs"
    stored = pd.read_csv(moved / "processed" / experiment.config.dataset_name / "ben-32" / "manifest.csv",
                         dtype=str, keep_default_na=False)
    assert not any(p.startswith("/") for p in stored["path"]) and not any(s.startswith("/") for s in stored["source"])


def test_an_ensemble_may_not_take_a_path_or_an_experiments_name(trained):
    experiment, work, env = trained
    other = work / "models" / "trust2"
    if not other.exists():
        shutil.copytree(experiment.dir, other)
    before = (experiment.dir / "tuning.json").read_bytes()
    for name, message in (("../../x", "must be a plain folder name"), ("/tmp/x", "must be a plain folder name"),
                          ("trust", "is a trained experiment")):
        done = run_script("predict.py", "--experiments", "trust", "trust2", "--name", name, cwd=work, env=env)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert (experiment.dir / "tuning.json").read_bytes() == before
    assert not (work.parent.parent / "x").exists()


def test_a_kill_during_the_oof_leaves_no_fold_that_says_up_to_date(tiny_aptos, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the new model grades its validation images: the old OOF never stands beside the new export."""
    import retinopathy.training.train as train
    from retinopathy.data.folds import make_folds

    experiment = Experiment(debug_config(tiny_aptos, "oof-kill"), Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    make_folds(experiment, verbose=False)
    capsys.readouterr()
    train.train_fold(experiment, 0, verbose=True)
    said = capsys.readouterr().out  # the two QWK figures a fold prints say which is which
    assert "best qwk so far, on the validation fold at epoch 1:" in said
    assert "of the exported model" in said and "the epoch table's qwk is the training loop's own figure" in said
    assert train.fold_is_done(experiment, 0)
    retrained = Experiment(experiment.config.replace(epochs=2), experiment.paths)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run_on_files", killed)
    with pytest.raises(KeyboardInterrupt):
        train.train_fold(retrained, 0, verbose=False)
    assert not train.fold_is_done(retrained, 0) and not train.fold_is_done(experiment, 0)
    assert not (experiment.fold_dir(0) / "oof.csv").exists()


def test_train_again_skips_a_finished_fold_and_restart_trains_it(trained):
    experiment, work, env = trained
    export = experiment.fold_dir(0) / "export.pkl"
    before = export.stat().st_mtime_ns
    config = str(experiment.dir / "config.yaml")
    done = run_script("train.py", "--config", config, "--fold", "0", cwd=work, env=env)
    assert done.returncode == 0 and "fold 0: up to date" in done.stdout and export.stat().st_mtime_ns == before
    done = run_script("train.py", "--config", config, "--fold", "0", "--resume", "--restart", cwd=work, env=env)
    assert done.returncode == 2 and "contradict" in done.stderr


def test_an_incomplete_ensemble_is_refused_everywhere_unless_named(trained, tmp_path):
    experiment, work, env = trained
    partial = work / "models" / "trust-one"
    if not partial.exists():
        shutil.copytree(experiment.dir, partial)
        shutil.rmtree(partial / "fold1")
    config = str(partial / "config.yaml")
    for script in ("predict.py", "interpret.py", "serve.py"):
        done = run_script(script, "--config", config, "name=trust-one", *(["--port", "0"] if script == "serve.py"
                                                                          else []), cwd=work, env=env)
        assert done.returncode == 2 and "fold 1 of" in done.stderr and "--folds 0" in done.stderr, (script,
                                                                                                     done.stderr)
    done = run_script("predict.py", "--config", config, "name=trust-one", "--folds", "0", cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    assert "from 1 model(s)" in done.stdout


@pytest.mark.parametrize("bad", ["nan", "-3", "1e10"])
def test_pseudo_labels_outside_the_grade_scale_are_refused(trained, tmp_path, bad):
    from retinopathy.data.folds import pseudo_label_rows

    experiment, work, _ = trained
    source = tmp_path / "grader"
    source.mkdir()
    outputs = pd.read_csv(experiment.dir / "test_outputs.csv", dtype={"id": str})
    column = [c for c in outputs.columns if c != "id"][-1]
    outputs[column] = outputs[column].astype(object)
    outputs.loc[2, column] = bad
    outputs.to_csv(source / "test_outputs.csv", index=False)
    for head in ("classification", "regression"):
        learner = Experiment(experiment.config.replace(pseudo_labels=str(source), head=head), experiment.paths)
        with pytest.raises(UserError, match=r"test_outputs\.csv, row 4: outputs .* are not a grader's"):
            pseudo_label_rows(learner)


def test_one_image_per_grade_is_one_line(tmp_path):
    from retinopathy.data.folds import assign_folds

    labels = pd.DataFrame({"id": [f"i{g}" for g in range(5)], "grade": range(5)})
    with pytest.raises(UserError, match="every grade has fewer labelled images than the 2 folds"):
        assign_folds(labels, 2, 0, APTOS2019)


@pytest.mark.parametrize("text, why", [("{not json", "not a grade rule"),
                                       ('{"thresholds": ["a", "b"]}', "not a grade rule"),
                                       ("[1, 2]", "not a mapping"), ('{"thresholds": [0.5]}', "thresholds")])
def test_a_broken_tuning_file_is_one_line(tmp_path, text, why):
    from retinopathy.metrics import GradeRule

    (tmp_path / "tuning.json").write_text(text)
    with pytest.raises(UserError, match=why) as refused:
        GradeRule.read(tmp_path, "regression")
    assert "tuning.json" in str(refused.value) and "predict again" in str(refused.value)


@pytest.mark.parametrize("text", ["date,experiment\n2026,a,b,c,d,e\n\"unclosed\n", "date,other\n1,2\n"])
def test_a_broken_results_table_is_one_line(tmp_path, text):
    from retinopathy.reports.results import read_results

    (tmp_path / "results.csv").write_text(text)
    with pytest.raises(UserError, match=r"results\.csv: not a results table .* move it aside"):
        read_results(tmp_path / "results.csv")


def test_init_from_a_model_that_saw_this_folds_validation_images_is_refused(trained):
    from retinopathy.data.folds import make_folds
    from retinopathy.training.train import train_fold

    experiment, work, _ = trained
    other_seed = Experiment(experiment.config.replace(name="trust-init", seed=7, init_from=str(experiment.dir)),
                            experiment.paths)
    make_folds(other_seed, verbose=False)
    with pytest.raises(UserError, match=r"init_from: fold 0 of .* trained on \d+ of this fold's \d+ validation "
                                        r"images .* use its n_folds=2 and seed=42"):
        train_fold(other_seed, 0, verbose=False)


def test_killing_the_pipeline_kills_the_folds_it_trains_side_by_side(tiny_aptos, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import DEBUG_CONFIG, REPO, child_processes, process_alive

    pipeline = subprocess.Popen([sys.executable, str(REPO / "scripts" / "pipeline.py"), "--config", str(DEBUG_CONFIG),
                                 "--raw-dir", str(tiny_aptos), "--data-dir", str(tmp_path / "data"),
                                 "folds_at_once=2", "epochs=50", "num_workers=0"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "RETINOPATHY_OUTPUT_DIR": str(tmp_path)})
    deadline, kids = time.time() + 120, []
    while time.time() < deadline and len(kids) < 2:
        kids = [k for k in child_processes(pipeline.pid)
                if "train" in Path(f"/proc/{k}/cmdline").read_text(errors="ignore")]
        time.sleep(0.2)
    assert len(kids) == 2, "both folds started"
    os.kill(pipeline.pid, signal.SIGKILL)
    pipeline.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(process_alive(k) for k in kids):
        time.sleep(0.2)
    assert not any(process_alive(k) for k in kids), "no fold trains on, orphaned"
