"""No answer that looks right and is not: ids that are paths, images that were never prepared, a moved data folder,
an ensemble named like an experiment, extra data that is the target itself."""

import shutil

import pandas as pd
import pytest

from retinopathy.competitions import APTOS2019, read_labels, read_test_ids
from retinopathy.data.manifest import read_manifest_file
from retinopathy.errors import UserError
from retinopathy.experiment import Experiment
from retinopathy.paths import Paths
from retinopathy.preprocessing.stage import preprocess, preprocess_dataset

from conftest import debug_config, run_script, tiny_pipeline


@pytest.fixture(scope="module")
def trained(tiny_aptos, tmp_path_factory):
    work = tmp_path_factory.mktemp("trust")
    experiment, _ = tiny_pipeline(tiny_aptos, work, "trust")
    env = {"RETINOPATHY_OUTPUT_DIR": str(work), "RETINOPATHY_DATA_DIR": str(work / "data")}
    return experiment, work, env


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
