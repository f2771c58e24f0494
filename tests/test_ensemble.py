"""OOF post-processing: thresholds, experiment weights, EyePACS eye blending."""

import numpy as np
import pandas as pd
import pytest

from retinopathy.competitions import APTOS2019, EYEPACS2015
from retinopathy.inference.tuning import optimize_thresholds, optimize_weights, qwk_at, tune_eye_blend
from retinopathy.metrics import DEFAULT_THRESHOLDS, blend_eyes


def test_thresholds_recover_a_shifted_scale():
    rng = np.random.default_rng(0)
    grades = rng.choice(5, size=600, p=[0.5, 0.1, 0.25, 0.05, 0.1])
    values = grades * 0.6 + 0.9 + rng.normal(0, 0.15, size=600)  # a model whose scale is off
    before = qwk_at(values, grades, DEFAULT_THRESHOLDS)
    tuned = optimize_thresholds(values, grades)
    after = qwk_at(values, grades, tuned)
    assert after > before + 0.1 and after > 0.9
    assert list(tuned) == sorted(tuned)


def test_thresholds_never_worse_than_the_start(monkeypatch):
    """Nelder-Mead on a step function can end somewhere worse than it began: then the start is kept."""
    from types import SimpleNamespace

    import retinopathy.inference.tuning as tuning

    rng = np.random.default_rng(3)
    grades = rng.integers(0, 5, size=200)
    values = grades + rng.normal(0, 0.4, size=200)
    lost = SimpleNamespace(x=np.array([3.6, 3.7, 3.8, 3.9]))  # an optimizer that wandered off
    monkeypatch.setattr(tuning, "minimize", lambda *args, **kwargs: lost)
    assert qwk_at(values, grades, lost.x) < qwk_at(values, grades, DEFAULT_THRESHOLDS)
    kept = tuning.optimize_thresholds(values, grades)
    assert kept != tuple(lost.x) and qwk_at(values, grades, kept) >= qwk_at(values, grades, DEFAULT_THRESHOLDS)
    monkeypatch.undo()
    tuned = tuning.optimize_thresholds(values, grades)
    assert qwk_at(values, grades, tuned) >= qwk_at(values, grades, DEFAULT_THRESHOLDS)


def test_no_tuned_threshold_leaves_a_grade_unreachable():
    """A model whose outputs for grade 4 barely pass grade 3's (what regression to the mean does): QWK alone
    pushes the last threshold above every output, so no eye is ever graded 4. Tuning keeps each labelled grade
    given to at least a quarter as many images as carry it, at no real cost in QWK."""
    from scipy.optimize import minimize

    from retinopathy.inference.tuning import MIN_SHARE, unreachable_grades
    from retinopathy.metrics import cut

    rng = np.random.default_rng(0)
    grades = rng.choice(5, 600, p=[0.45, 0.12, 0.27, 0.08, 0.08])
    values = np.array([0.1, 1.0, 2.0, 2.4, 2.6])[grades] + rng.normal(0, 0.35, len(grades))
    start = np.asarray(DEFAULT_THRESHOLDS)
    simplex = np.vstack([start] + [start + 0.5 * np.eye(4)[i] for i in range(4)])
    qwk_only = np.sort(minimize(lambda t: -qwk_at(values, grades, np.sort(t)), start, method="Nelder-Mead",
                                options={"initial_simplex": simplex}).x)
    assert qwk_only[-1] > values.max() and unreachable_grades(values, grades, qwk_only) == [4], "the failure"
    tuned = optimize_thresholds(values, grades)
    given = cut(values, tuned)
    assert unreachable_grades(values, grades, tuned) == [] and list(tuned) == sorted(tuned)
    assert (given == 4).sum() >= MIN_SHARE * (grades == 4).sum() and tuned[-1] < values.max()
    assert qwk_at(values, grades, tuned) >= qwk_at(values, grades, qwk_only) - 0.01


def test_weights_favour_the_better_experiment():
    rng = np.random.default_rng(1)
    grades = rng.integers(0, 5, size=500)
    good = grades + rng.normal(0, 0.3, size=500)
    noise = rng.uniform(0, 4, size=500)
    weights = optimize_weights([noise, good], grades)
    assert weights.sum() == pytest.approx(1) and weights[1] > 0.7


def test_eye_blending_uses_the_other_eye():
    ids = pd.Series([f"{p}_{side}" for p in range(300) for side in ("left", "right")])
    assert [EYEPACS2015.other_eye(i) for i in ids.iloc[:2]] == ["0_right", "0_left"]
    assert APTOS2019.other_eye("0_left") == "", "APTOS ids name no patient"
    rng = np.random.default_rng(2)
    patient_grade = np.repeat(rng.integers(0, 5, size=300), 2)
    values = patient_grade + rng.normal(0, 0.8, size=600)  # both eyes share the grade; each view is noisy
    weight = tune_eye_blend(ids, values, patient_grade, DEFAULT_THRESHOLDS)
    assert weight > 0.2
    blended = blend_eyes(ids, values, weight)
    assert qwk_at(blended, patient_grade, DEFAULT_THRESHOLDS) > qwk_at(values, patient_grade, DEFAULT_THRESHOLDS)
    lonely = blend_eyes(pd.Series(["5_left"]), np.array([2.0]), 0.5)
    assert lonely.tolist() == [2.0], "an eye without its partner keeps its own value"


def test_tuning_says_which_grade_no_threshold_can_reach(monkeypatch, capsys, tmp_path):
    """A model whose outputs never leave 0-1.2 (one epoch, a rare grade) cannot give grade 4, however tuned: said."""
    from types import SimpleNamespace

    from retinopathy.inference import tuning

    rng = np.random.default_rng(0)
    grades = np.repeat(np.arange(5), 40)
    values = np.clip(grades * 0.3 + rng.normal(0, 0.05, len(grades)), 0, 1.2)
    values[grades >= 3] = 1.2  # saturated: grades 3 and 4 get the very same output
    oof = pd.DataFrame({"id": [f"i{k}" for k in range(len(grades))], "grade": grades, "value": values})
    monkeypatch.setattr(tuning, "load_oof", lambda experiment: oof)
    from retinopathy.heads import get_head

    experiment = SimpleNamespace(config=SimpleNamespace(head="regression", fingerprint="f"), dir=tmp_path,
                                 competition=APTOS2019, head=get_head("regression"))
    tuning.tune_experiment(experiment, verbose=True, write=False)
    said = capsys.readouterr().out
    assert "stays out of reach" in said and "balance=sampler" in said, said
    assert not (tmp_path / "tuning.json").exists(), "written by the caller"

    oof["value"] = grades + rng.normal(0, 0.2, len(grades))  # a model that separates every grade
    tuning.tune_experiment(experiment, verbose=True, write=False)
    assert "out of reach" not in capsys.readouterr().out


def test_the_quick_kappa_is_scikit_learns():
    from sklearn.metrics import cohen_kappa_score

    from retinopathy.metrics import quadratic_kappa

    rng = np.random.default_rng(1)
    for n in (7, 50, 3000):
        targets, grades = rng.integers(0, 5, n), rng.integers(0, 5, n)
        grades[: n // 2] = targets[: n // 2]  # some agreement
        for a, b in ((grades, targets), (np.minimum(grades, 2), targets), (targets, targets)):
            assert quadratic_kappa(a, b) == pytest.approx(
                cohen_kappa_score(b, a, weights="quadratic", labels=[0, 1, 2, 3, 4]), abs=1e-12)
