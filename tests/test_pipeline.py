"""The whole pipeline end to end on a tiny synthetic competition: 2 folds, 1 epoch, 32 px, CPU."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from retinopathy.config import load_config
from retinopathy.data.manifest import read_manifest_file
from retinopathy.errors import UserError
from retinopathy.metrics import quadratic_kappa
from retinopathy.pipeline import run_pipeline

from conftest import REPO, headless_chromium, run_script, tiny_pipeline


@pytest.fixture(scope="module")
def finished(tiny_aptos, tmp_path_factory):
    """Run the pipeline once; the tests below inspect what it left."""
    work = tmp_path_factory.mktemp("work")
    experiment, result = tiny_pipeline(tiny_aptos, work, "tiny")
    return experiment, result, work


def test_submission_matches_the_sample(finished, tiny_aptos):
    experiment, result, _ = finished
    assert result.submission == experiment.submission and result.submission.is_file()
    submission = pd.read_csv(result.submission, dtype={"id_code": str})
    sample = pd.read_csv(tiny_aptos / "sample_submission.csv", dtype={"id_code": str})
    assert list(submission.columns) == ["id_code", "diagnosis"]
    assert submission["id_code"].tolist() == sample["id_code"].tolist()
    assert submission["diagnosis"].isin([0, 1, 2, 3, 4]).all()


def test_cv_report_covers_every_training_image(finished, tiny_aptos):
    experiment, result, _ = finished
    assert result.cv["n"] == 40 and set(result.cv["folds"]) == {0, 1}
    oof = pd.concat([pd.read_csv(experiment.fold_dir(k) / "oof.csv") for k in (0, 1)])
    assert result.cv["pooled"] == pytest.approx(quadratic_kappa(oof["pred"], oof["grade"])), \
        "the pooled CV score is the QWK of the folds' own OOF grades"
    assert np.sum(result.cv["confusion"]) == 40
    submission = pd.read_csv(result.submission, dtype={"id_code": str})
    truth = pd.read_csv(tiny_aptos / "solution.csv", dtype={"id_code": str}).merge(submission, on="id_code",
                                                                                 suffixes=("", "_pred"))
    assert result.test_qwk == pytest.approx(quadratic_kappa(truth["diagnosis_pred"], truth["diagnosis"]))


def test_fold_outputs(finished):
    experiment, _, _ = finished
    for fold in (0, 1):
        d = experiment.fold_dir(fold)
        for name in ("export.pkl", "oof.csv", "history.csv", "loss.png", "config.yaml"):
            assert (d / name).is_file(), name
        oof = pd.read_csv(d / "oof.csv")
        assert (oof["fold"] == fold).all() and len(oof) == 20
        assert np.allclose(oof[[f"prob_{g}" for g in range(5)]].sum(axis=1), 1, atol=1e-4)
        assert load_config(d / "config.yaml") == experiment.config
        history = pd.read_csv(d / "history.csv")
        assert {"train_loss", "valid_loss", "qwk", "accuracy", "error_rate"} <= set(history.columns)
    assert not list(experiment.dir.rglob("*.tmp")), "no temporary file left behind"


def test_exported_learner_reproduces_the_oof_predictions_on_cpu(finished):
    experiment, _, _ = finished
    from retinopathy.inference.grader import Grader
    from retinopathy.training.serving_model import TorchRunner

    grader = Grader([experiment.fold_dir(0) / "export.pkl"], tta=False)
    oof = pd.read_csv(experiment.fold_dir(0) / "oof.csv", dtype={"id": str})
    manifest = read_manifest_file(experiment.processed_dir)
    items = oof[["id"]].merge(manifest[["id", "path"]], on="id")
    probs = grader.outputs_of_files(items["path"].tolist())
    assert np.allclose(probs, oof[[f"prob_{g}" for g in range(5)]].to_numpy(), atol=1e-4)
    # the layout a CPU prefers from 128 px gives the same outputs
    faster = TorchRunner(grader.runners[0].model, image_size=10_000)
    first_conv = next(w for w in faster.model.parameters() if w.dim() == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    from retinopathy.preprocessing.image_io import read_prepared
    assert np.allclose(faster(read_prepared(items["path"])), probs, atol=1e-5)


def test_second_run_skips_finished_folds(finished, capsys):
    experiment, first, _ = finished
    mtime = (experiment.fold_dir(0) / "export.pkl").stat().st_mtime_ns
    again = run_pipeline(experiment.config, experiment.paths)
    assert "fold 0: up to date" in capsys.readouterr().out
    assert (experiment.fold_dir(0) / "export.pkl").stat().st_mtime_ns == mtime
    assert again.cv == first.cv


def test_predict_script(finished, tiny_aptos):
    experiment, _, work = finished
    experiment.submission.unlink()
    config = experiment.config.save(work / "tiny.yaml")
    result = run_script("predict.py", "--config", str(config), "--data-dir", str(work / "data"), cwd=work)
    assert result.returncode == 0, result.stderr
    assert "CV QWK" in result.stdout and experiment.submission.is_file()
    lines = result.stdout.splitlines()
    heading = "referable DR (grade ≥ 2), per image, out of fold"
    first = next(i for i, line in enumerate(lines) if line.startswith(heading))
    assert "AUC" in lines[first] and lines[first + 1].startswith("  tuned grade rule: sensitivity ")
    assert sum(line.startswith("  score ≥ ") for line in lines[first:first + 4]) == 2, "one line per operating point"


def test_results_table_traces_the_run(finished):
    experiment, result, work = finished
    table = pd.read_csv(work / "reports" / "results.csv")
    assert (table["experiment"] == "tiny").sum() == 1, "the pipeline and predict ran again: one row, replaced"
    row = table[table["experiment"] == "tiny"].iloc[-1]
    comparison = (work / "reports" / "index.html").read_text()
    assert comparison.count("<tr>") == len(table) + 1 and ">tiny<" in comparison
    assert row["oof_qwk"] == pytest.approx(result.cv["pooled"], abs=1e-4)
    assert row["config"].endswith("models/tiny/config.yaml") and row["submission"].endswith("tiny.csv")
    assert row["commit"] != "" and len(str(row["commit"])) >= 7
    assert "| tiny |" in (work / "reports" / "results.md").read_text()
    # the screening columns: referable DR at the tuned rule, computed here from the OOF outputs directly
    from sklearn.metrics import roc_auc_score

    from retinopathy.heads import get_head
    from retinopathy.inference.oof import load_oof
    from retinopathy.inference.tuning import read_rule

    oof, rule = load_oof(experiment), read_rule(experiment)
    outputs = get_head(experiment.config.head).outputs_of(oof)
    called, referable = rule.grades(outputs, oof["id"]) >= 2, oof["grade"].to_numpy() >= 2
    assert row["referable_sensitivity"] == pytest.approx((called & referable).sum() / referable.sum(), abs=1e-4)
    assert row["referable_specificity"] == pytest.approx((~called & ~referable).sum() / (~referable).sum(), abs=1e-4)
    assert row["referable_auc"] == pytest.approx(roc_auc_score(referable, rule.values(outputs, oof["id"])), abs=1e-4)
    for name in ("sensitivity", "specificity", "auc"):
        assert row[f"referable_{name}_low"] <= row[f"referable_{name}"] <= row[f"referable_{name}_high"]


@pytest.mark.slow  # a second pipeline and three predict runs
def test_ensemble_of_two_experiments(finished, tiny_aptos):
    experiment, _, work = finished
    regression = experiment.config.replace(name="tiny-reg", head="regression", balance="loss")
    run_pipeline(regression, experiment.paths)
    tuning = __import__("json").loads((experiment.paths.experiment("tiny-reg") / "tuning.json").read_text())
    from retinopathy.inference.oof import load_oof
    from retinopathy.inference.tuning import unreachable_grades
    from retinopathy.metrics import DEFAULT_THRESHOLDS
    from retinopathy.pipeline import Experiment

    oof = load_oof(Experiment(regression, experiment.paths))  # a 1-epoch model: outputs pile up, not all can be
    left = unreachable_grades(oof["value"], oof["grade"], tuning["thresholds"])
    assert len(left) <= len(unreachable_grades(oof["value"], oof["grade"], DEFAULT_THRESHOLDS)), "never fewer grades"
    assert tuning["thresholds"] == sorted(tuning["thresholds"])

    done = run_script("predict.py", "--experiments", "tiny", "tiny-reg", "--data-dir", str(work / "data"), cwd=work)
    assert done.returncode == 0, done.stderr
    out = work / "submissions" / "ensemble-tiny+tiny-reg.csv"
    submission = pd.read_csv(out, dtype={"id_code": str})
    sample = pd.read_csv(tiny_aptos / "sample_submission.csv", dtype={"id_code": str})
    assert submission["id_code"].tolist() == sample["id_code"].tolist()
    tuning = work / "models" / "ensemble-tiny+tiny-reg" / "tuning.json"
    weights = __import__("json").loads(tuning.read_text())["weights"]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1) and min(weights) >= 0

    unknown = run_script("predict.py", "--experiments", "tiny", "nope", "--data-dir", str(work / "data"), cwd=work)
    assert unknown.returncode == 2 and "no experiment 'nope'" in unknown.stderr and "tiny-reg" in unknown.stderr
    twice = run_script("predict.py", "--experiments", "tiny", "tiny", "--data-dir", str(work / "data"), cwd=work)
    assert twice.returncode == 2 and "names 'tiny' twice" in twice.stderr, twice.stderr[-1500:]


def test_an_experiment_is_the_folder_named_not_the_name_inside_its_config(finished):
    import shutil

    from retinopathy.inference.ensemble import load_experiment

    experiment, _, work = finished
    shutil.copytree(experiment.dir, work / "models" / "tiny-copy")  # its config.yaml still says name: tiny
    copy = load_experiment("tiny-copy", experiment.paths)
    assert copy.dir == work / "models" / "tiny-copy" and copy.fold_dir(0).parent == copy.dir
    assert copy.config.fingerprint == experiment.config.fingerprint, "the same model settings"


def test_interpret_report(finished):
    from PIL import Image
    experiment, _, work = finished
    done = run_script("interpret.py", "--config", str(experiment.config.save(work / "tiny.yaml")),
                      "--data-dir", str(work / "data"), cwd=work)
    assert done.returncode == 0, done.stderr
    assert "interpret [1/4] out-of-fold losses" in done.stdout and "interpret [4/4] the page" in done.stdout
    out = work / "reports" / "tiny"
    for name in ("confusion_matrix.png", "curves.png", "roc.png", "reliability.png"):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 200
    per_grade = pd.read_csv(out / "per_grade.csv")
    assert per_grade["support"].sum() == 40 and {"precision", "recall"} <= set(per_grade.columns)
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 + 32 and "arch: resnet10t" in page and "fold 1" in page
    assert page.count('<figure class="tile') == 32, "16 most wrong and 16 least sure, each its own tile"
    assert "referable DR (grade ≥ 2), per image" in page and "expected calibration error" in page
    losses = pd.read_csv(out / "top_losses.csv")
    assert losses["loss"].is_monotonic_decreasing and len(losses) == 16
    assert "No heat maps: at 32 px the model's last stage is 1 × 1 cells" in page, "too coarse to read: said so"
    from retinopathy.reports.interpret import interpret
    interpret(experiment, heat_maps="always", top=4, show=False)
    forced = (out / "index.html").read_text()
    assert "Reading the heat maps" in forced and forced.count(" heat map\"") == 8, "each image beside its overlay"


def test_the_report_and_the_comparison_in_headless_chromium(finished, tmp_path):
    """The report as a person sees it: the summary on top, every picture decoded, a tile enlarged by a click and
    closed by Escape; a screenshot that is not blank; the comparison page linking to the report."""
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from retinopathy.reports.interpret import interpret

    experiment, _, work = finished
    page = interpret(experiment, top=8, show=False)
    with headless_chromium(1300, 1000) as driver:
        driver.get(page.resolve().as_uri())
        cards = driver.find_elements(By.CSS_SELECTOR, "#summary .card")
        assert len(cards) == 4 and "referable DR AUC" in cards[1].text and cards[0].location["y"] < 400
        undecoded = driver.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
        assert undecoded == 0 and len(driver.find_elements(By.TAG_NAME, "img")) >= 4 + 16
        tile = driver.find_elements(By.CSS_SELECTOR, "#top-losses .tile")[0]
        small = tile.size["width"]
        caption = tile.find_element(By.TAG_NAME, "figcaption")
        assert "actual" in caption.text and "predicted" in caption.text
        assert float(driver.execute_script("return getComputedStyle(arguments[0]).fontSize", caption)[:-2]) >= 12
        driver.execute_script("arguments[0].scrollIntoView()", tile)
        tile.click()
        assert "enlarged" in tile.get_attribute("class") and tile.size["width"] > 1.5 * small
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        with Image.open(shot) as im:
            pixels = np.asarray(im.convert("L"), float)
        assert pixels.std() > 20, "the screenshot shows something"
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert "enlarged" not in tile.get_attribute("class")
        driver.get((work / "reports" / "index.html").resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#experiments tr")
        assert len(rows) >= 2 and "CV QWK" in rows[0].text
        driver.find_element(By.LINK_TEXT, "tiny").click()
        assert driver.find_element(By.TAG_NAME, "h1").text == "tiny"


def test_the_throughput_benchmark_prints_its_ratio_line(tmp_path):
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "batch_size=4", "--configs",
                           "debug", "--steps", "2", "--workers", "0", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for loader in ("png", "store"):
        ratio = re.search(rf"^throughput ratio \(training / model alone\): debug loader={loader} (\d+\.\d\d)$",
                          done.stdout, re.M)
        assert ratio and 0.2 < float(ratio.group(1)) < 2.0, done.stdout[-1500:]
    png = re.search(r"loader from png, 0 worker\(s\): +(\d+\.\d) images/s", done.stdout)
    store = re.search(r"loader from store: +(\d+\.\d) images/s", done.stdout)
    ratio = re.search(r"^store / png loader ratio at 32 px: (\d+\.\d\d)$", done.stdout, re.M)
    assert png and store and ratio, done.stdout[-1500:]
    assert float(ratio.group(1)) == pytest.approx(float(store.group(1)) / float(png.group(1)), rel=0.01)
    from PIL import Image
    with Image.open(tmp_path / "augmentation-debug.png") as grid:
        assert grid.size[0] > 300 and grid.size[1] > 200, "samples without, per item and per batch (png, store)"


@pytest.mark.slow  # two training processes
def test_folds_side_by_side_train_as_one_after_another(finished, tiny_aptos, tmp_path, monkeypatch, capsys):
    """folds_at_once=2: each fold trained by its own process, to the same predictions as one after another."""
    from retinopathy import launcher

    experiment, first, _ = finished
    monkeypatch.setattr(launcher, "SIDE_BY_SIDE_PROGRESS_S", 0.5)
    # torch's float sums depend on how many threads share them: each process computes on as many as the reference
    # run in this process did (a caller's setting wins over the launcher's share of the cores), or the two differ
    # in the fifth decimal for that reason alone
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    side, result = tiny_pipeline(tiny_aptos, tmp_path, "tiny", "folds_at_once=2")
    printed = capsys.readouterr().out
    assert "training 2 folds (0, 1) side by side, 2 at a time" in printed
    assert re.search(r"side by side: fold \d (starting|epoch 1/1 QWK -?\d\.\d{3})", printed)
    assert re.search(r"^fold 0: QWK .* in \d+s", printed, re.MULTILINE)  # each fold's closing line, relayed
    assert side.config.fingerprint == experiment.config.fingerprint  # a runtime setting: the same model
    for fold in (0, 1):
        log = (side.dir / f"train-fold{fold}.log").read_text()
        assert f"fold {fold}: QWK" in log
        assert "\r" not in log and "█" not in log, "a log file holds plain lines, no progress-bar fragments"
        assert re.search(r"^1\s+\d\.\d{6}", log, re.M), "the epoch table as plain lines, counted from 1"
        together = pd.read_csv(side.fold_dir(fold) / "oof.csv", dtype={"id": str})
        alone = pd.read_csv(experiment.fold_dir(fold) / "oof.csv", dtype={"id": str})
        assert together["id"].tolist() == alone["id"].tolist()
        probs = [f"prob_{g}" for g in range(5)]
        assert np.allclose(together[probs].to_numpy(), alone[probs].to_numpy(), atol=1e-5)
    assert result.cv["pooled"] == pytest.approx(first.cv["pooled"], abs=0.02)


@pytest.mark.slow  # two training processes
def test_a_fold_failing_beside_the_others_is_one_line_naming_its_log(tiny_aptos, tmp_path, capsys):
    """A fold's process that stops (here: a weights file that is not there) ends the pipeline in one line."""
    missing = tmp_path / "no-such-weights.pth"
    with pytest.raises(UserError, match=r"fold \d failed beside the others: .*no-such-weights.*train-fold\d\.log"):
        tiny_pipeline(tiny_aptos, tmp_path, "broken", "folds_at_once=2", f"pretrained_weights={missing}")
    assert "stopped (exit 2)" in capsys.readouterr().out
