"""Screening figures: sensitivity, specificity and AUC for referable and vision-threatening DR with bootstrap
intervals (patients resampled together), the worse eye per patient, calibration; checked against direct counts."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from retinopathy.screening import (
    SENSITIVITY_TARGETS,
    auroc,
    bootstrap,
    calibration,
    cutoff_for_sensitivity,
    screen,
    worse_eye,
)


def graded(n=400, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.choice(5, n, p=[0.45, 0.1, 0.25, 0.1, 0.1])
    scores = truth + rng.normal(0, 0.7, n)
    return truth, scores, np.clip(np.rint(scores), 0, 4).astype(int)


def test_the_figures_are_the_direct_counts():
    truth, scores, predicted = graded()
    referable = screen("referable", scores, predicted, truth, resamples=200)
    positive, called = truth >= 2, predicted >= 2
    rule = referable.points[0]
    assert rule.sensitivity.value == pytest.approx((called & positive).sum() / positive.sum())
    assert rule.specificity.value == pytest.approx((~called & ~positive).sum() / (~positive).sum())
    assert referable.auc.value == pytest.approx(roc_auc_score(positive, scores))
    assert referable.n == 400 and referable.positives == positive.sum()
    for estimate in (rule.sensitivity, rule.specificity, referable.auc):
        assert estimate.low < estimate.value < estimate.high and estimate.high - estimate.low < 0.2
    threatening = screen("vision-threatening", scores, predicted, truth, resamples=50)
    assert threatening.positives == (truth >= 3).sum()


def test_operating_points_reach_their_sensitivity_with_the_highest_cutoff():
    truth, scores, predicted = graded()
    positive = truth >= 2
    for target in SENSITIVITY_TARGETS:
        cutoff = cutoff_for_sensitivity(scores, positive, target)
        assert (scores[positive] >= cutoff).mean() >= target
        above = np.min(scores[scores > cutoff])
        assert (scores[positive] >= above).mean() < target, "a higher cut-off would still reach it"
    points = screen("referable", scores, predicted, truth, resamples=20).points
    assert [p.sensitivity.value >= t for p, t in zip(points[1:], SENSITIVITY_TARGETS, strict=False)] == [True, True]
    chosen = {0.90: 1.0, 0.95: 0.5}  # given cut-offs (chosen out of fold) are used as they are
    assert [p.cutoff for p in screen("referable", scores, predicted, truth, cutoffs=chosen,
                                     resamples=20).points[1:]] == [1.0, 0.5]


def test_patients_are_resampled_whole():
    """With groups, every resample draws both eyes of a patient: a statistic of the rows drawn sees pairs."""
    groups = np.repeat(np.arange(100), 2)
    rows = np.arange(200)
    pairs_whole = bootstrap(lambda r: float(all(np.bincount(r // 2)[np.unique(r // 2)] % 2 == 0)), (rows,), groups,
                            resamples=50)
    assert pairs_whole.low == pairs_whole.high == 1.0
    loose = bootstrap(lambda r: float(all(np.bincount(r // 2)[np.unique(r // 2)] % 2 == 0)), (rows,),
                      resamples=50)
    assert loose.high == 0.0, "rows drawn one by one split the pairs"


def test_undefined_figures_are_nan_not_an_error():
    assert np.isnan(auroc(np.arange(5.0), np.zeros(5, bool)))
    nothing = screen("vision-threatening", np.arange(6.0), np.zeros(6, int), np.zeros(6, int), resamples=20)
    assert np.isnan(nothing.points[0].sensitivity.value) and nothing.points[0].specificity.value == 1.0


def test_the_worse_eye_grades_the_patient():
    score, predicted, true = worse_eye(["1", "1", "2", "2"], [0.2, 2.5, 1.0, 0.1], [0, 3, 1, 0], [0, 2, 4, 0])
    assert score.tolist() == [2.5, 1.0] and predicted.tolist() == [3, 1] and true.tolist() == [2, 4]


def test_calibration_error_is_small_when_confidence_is_honest_and_large_when_not():
    rng = np.random.default_rng(1)
    n = 4000
    confidence = rng.uniform(0.2, 1.0, n)
    predicted = rng.integers(0, 5, n)
    right = rng.uniform(size=n) < confidence  # right as often as it says
    truth = np.where(right, predicted, (predicted + 1) % 5)
    probabilities = np.full((n, 5), 0.0)
    probabilities[np.arange(n), predicted] = confidence
    honest = calibration(probabilities, truth)
    assert honest.ece < 0.03
    boastful = calibration(np.where(probabilities > 0, 0.99, 0.0025), truth)
    assert boastful.ece > 0.3 and "overconfident" in boastful.line()
    table = honest.table
    assert table["count"].sum() == n and honest.ece == pytest.approx(
        (table["count"] * (table["confidence"] - table["accuracy"]).abs()).sum() / n)


def test_eyepacs_is_reported_per_image_and_per_patient_with_the_worse_eye():
    from retinopathy.competitions import EYEPACS2015
    from retinopathy.inference.oof import screening_report
    from retinopathy.metrics import GradeRule

    truth, scores, _ = graded(300, seed=2)
    ids = [f"{k // 2}_{'left' if k % 2 == 0 else 'right'}" for k in range(300)]
    rule = GradeRule.plain("regression")
    report = screening_report(ids, scores[:, None], truth, rule, EYEPACS2015, "out of fold", resamples=50)
    units = [(r.condition, r.unit) for r in report.results]
    assert units == [("referable", "image"), ("referable", "patient"), ("vision-threatening", "image"),
                     ("vision-threatening", "patient")]
    per_patient = report.results[1]
    worst = pd.DataFrame({"p": [i.split("_")[0] for i in ids], "t": truth}).groupby("p")["t"].max()
    assert per_patient.n == 150 and per_patient.positives == (worst >= 2).sum()
    assert report.calibration is None, "a regression states no probabilities"
    lines = report.lines()
    assert lines[0].startswith("referable DR (grade ≥ 2), per image, out of fold (300 images,")
    assert any(line.startswith("referable DR (grade ≥ 2), per patient") for line in lines)
    assert set(report.columns()) == {f"referable_{m}{b}" for m in ("sensitivity", "specificity", "auc")
                                     for b in ("", "_low", "_high")}
