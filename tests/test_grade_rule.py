"""One GradeRule: what it decides, and that every caller of the Grader (submission, offline kernel, web app, ONNX
export check, interpretation) grades the same images alike, for every head, with test-time flips and without."""

import json

import numpy as np
import pandas as pd
import pytest

from retinopathy.metrics import DEFAULT_THRESHOLDS, TUNING, GradeRule, blend_eyes

from conftest import tiny_pipeline


def test_plain_rules():
    probs = np.array([[0.1, 0.2, 0.3, 0.4, 0.0], [0.6, 0.1, 0.1, 0.1, 0.1]])
    assert GradeRule.plain("classification")(probs).tolist() == [3, 0]
    assert GradeRule.plain("regression")(np.array([[0.4], [0.5], [3.6]])).tolist() == [0, 1, 4]
    assert GradeRule.plain("regression").thresholds == DEFAULT_THRESHOLDS


def test_a_classifier_cut_on_its_expected_grade():
    probs = np.array([[0.5, 0.0, 0.0, 0.0, 0.5]])  # argmax says 0, the expected grade is 2
    assert GradeRule.plain("classification")(probs).tolist() == [0]
    assert GradeRule(use_values=True)(probs).tolist() == [2]


def test_eye_blending_needs_both_eyes():
    rule = GradeRule(use_values=True, thresholds=DEFAULT_THRESHOLDS, eye_blend=0.5)
    values = np.array([[0.0], [3.0], [3.0]])
    ids = ["7_left", "7_right", "8_left"]
    rule = GradeRule(use_values=True, thresholds=DEFAULT_THRESHOLDS, eye_blend=0.5, head="regression")
    assert rule(values, ids).tolist() == [2, 2, 3], "7's eyes meet at 1.5; 8 has no partner"
    assert rule(values).tolist() == [0, 3, 3], "graded one at a time, as the web app does, no blending"
    assert blend_eyes(ids, values[:, 0], 0.5).tolist() == [1.5, 1.5, 3.0]


def test_rule_round_trips_through_tuning_json(tmp_path):
    rule = GradeRule(True, (0.4, 1.4, 2.6, 3.3), 0.2, "ordinal").with_extra(oof_qwk=0.5, oof_qwk_tuned=0.6, n=10)
    (tmp_path / TUNING).write_text(json.dumps(rule.to_dict()))
    again = GradeRule.read(tmp_path, "classification")
    assert again == rule and again.extra["oof_qwk_tuned"] == 0.6
    assert GradeRule.read(tmp_path / "none", "regression") == GradeRule.plain("regression")


# regression (thresholds, and eye blending on EyePACS) on both competitions in the quick suite; every other
# pair in the slow one
@pytest.mark.parametrize("competition, head", [
    pytest.param("aptos", "classification", marks=pytest.mark.slow), ("aptos", "regression"),
    pytest.param("aptos", "ordinal", marks=pytest.mark.slow),
    pytest.param("aptos", "multitask pool=gem", marks=pytest.mark.slow),
    pytest.param("eyepacs", "classification", marks=pytest.mark.slow), ("eyepacs", "regression")])
def test_every_path_grades_the_same_images_alike(request, tmp_path, competition, head):
    from starlette.testclient import TestClient

    from retinopathy.competitions import read_test_ids
    from retinopathy.experiment import Experiment
    from retinopathy.heads import get_head
    from retinopathy.inference.export import export_fold
    from retinopathy.inference.grader import Grader
    from retinopathy.inference.offline import predict_offline
    from retinopathy.inference.oof import load_oof, oof_outputs
    from retinopathy.inference.predict import predict_test
    from retinopathy.inference.serve import create_app, prepare_upload
    from retinopathy.inference.tuning import write_rule
    from retinopathy.metrics import quadratic_kappa
    from retinopathy.reports.interpret import oof_with_losses

    head, *extra = head.split()
    raw = request.getfixturevalue(f"tiny_{competition}")
    trained, _ = tiny_pipeline(raw, tmp_path, f"rule-{head}", f"head={head}", *extra, folds=[0])
    oof = load_oof(trained)
    outputs_of = get_head(head)
    # A tuned rule that differs from the plain one in everything a path could forget: scores cut at thresholds
    # (for every head), thresholds that spread these outputs over the grades, and eye blending for EyePACS.
    scores = outputs_of.scores(oof_outputs(oof, outputs_of))
    thresholds = tuple(float(t) for t in np.quantile(scores, [0.2, 0.4, 0.6, 0.8]))
    rule = GradeRule(True, thresholds, 0.4 if competition == "eyepacs" else 0.0, head)
    write_rule(trained.dir, rule)

    comp = trained.competition
    ids = read_test_ids(raw, comp)
    photos = [comp.image_path(raw, "test", i).read_bytes() for i in ids]
    for tta in (False, True):
        experiment = Experiment(trained.config.replace(tta=tta), trained.paths, trained.only_folds)
        experiment.config.save(experiment.dir / "config.yaml")  # what the kernel's bundle and the server read
        grader = Grader([experiment.fold_dir(0) / "export.pkl"])
        assert grader.tta is tta, "the grader takes TTA from the experiment's config"
        outputs = np.concatenate([grader.outputs(prepare_upload(grader, p).image[None]) for p in photos])
        one_at_a_time, with_partners = rule(outputs), rule(outputs, ids)
        assert (one_at_a_time != GradeRule.plain(head)(outputs)).any(), "the rule must matter on these images"
        if competition == "eyepacs":
            assert (with_partners != one_at_a_time).any(), "eye blending must matter on these images"

        submission = pd.read_csv(predict_test(experiment, verbose=False), dtype={comp.id_column: str})
        assert submission[comp.id_column].tolist() == list(ids)
        assert submission[comp.label_column].tolist() == with_partners.tolist(), f"submission, tta={tta}"

        kernel = predict_offline(experiment.dir, raw, tmp_path / "kernel", verbose=False)  # prepared once
        graded = pd.read_csv(kernel, dtype={comp.id_column: str})[comp.label_column].tolist()
        assert graded == with_partners.tolist(), f"offline kernel, tta={tta}"

        with TestClient(create_app(model_paths=[experiment.fold_dir(0) / "export.pkl"])) as client:
            served = [client.post("/predict", files={"file": ("x", p, "application/octet-stream")}).json()["grade"]
                      for p in photos]
        assert served == one_at_a_time.tolist(), f"web app, tta={tta}"

    new_head = head in ("ordinal", "multitask")  # int8 for the heads its quantiser has not met yet
    export_fold(experiment, 0, engines=("onnx", "int8") if new_head else ("onnx",), verbose=False)
    if new_head:
        int8 = Grader([experiment.fold_dir(0) / "model-int8.onnx"], tta=False)
        assert int8.engine == "int8" and int8.outputs(prepare_upload(int8, photos[0]).image[None]).shape == \
            (1, len(outputs_of.columns))
    onnx = Grader([experiment.fold_dir(0) / "model.onnx"], tta=False)
    plain = Grader([experiment.fold_dir(0) / "export.pkl"], tta=False)
    from_onnx = np.concatenate([onnx.outputs(prepare_upload(onnx, p).image[None]) for p in photos])
    from_torch = np.concatenate([plain.outputs(prepare_upload(plain, p).image[None]) for p in photos])
    assert rule(from_onnx).tolist() == rule(from_torch).tolist(), "ONNX engine"
    report = json.loads((experiment.fold_dir(0) / "onnx.json").read_text())
    same_rule = quadratic_kappa(rule(oof_outputs(oof, outputs_of)), oof["grade"])
    assert report["onnx"]["qwk_reference"] == pytest.approx(same_rule), "the export checks against the same rule"

    interpreted = oof_with_losses(experiment).set_index("id").loc[oof["id"]]
    assert interpreted["pred"].tolist() == rule(oof_outputs(oof, outputs_of), oof["id"]).tolist(), "interpretation"
