import pandas as pd
import pytest

from retinopathy.competitions import APTOS2019, EYEPACS2015, read_labels
from retinopathy.data.folds import assign_folds, fold_summary
from retinopathy.errors import UserError

from conftest import shared


def test_aptos_folds_are_stratified_and_deterministic(tiny_aptos):
    labels = read_labels(tiny_aptos, APTOS2019)
    folds = assign_folds(labels, 4, seed=0, competition=APTOS2019)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    assert folds["fold"].value_counts().max() - folds["fold"].value_counts().min() <= 1
    zeros = folds[folds["grade"] == 0]["fold"].value_counts()
    assert zeros.max() - zeros.min() <= 1, "each grade spread evenly over the folds"
    assert folds.equals(assign_folds(labels, 4, seed=0, competition=APTOS2019))
    assert not folds.equals(assign_folds(labels, 4, seed=1, competition=APTOS2019))
    assert "grade 0 %" in fold_summary(folds)


def test_both_eyes_of_a_synthetic_patient_share_a_fold(tiny_eyepacs):
    labels = read_labels(tiny_eyepacs, EYEPACS2015)
    patient = labels["id"].str.rsplit("_", n=1).str[0]
    assert (patient.value_counts() == 2).all(), "the synthetic EyePACS has both eyes of every patient"
    folds = assign_folds(labels, 3, seed=0, competition=EYEPACS2015)
    assert (folds.groupby(patient)["fold"].nunique() == 1).all(), "no patient in two folds"
    split_anyway = assign_folds(labels, 3, seed=0, competition=APTOS2019)  # no grouping: twins get separated
    assert (split_anyway.groupby(patient)["fold"].nunique() > 1).any()


def test_eyepacs_keeps_both_eyes_of_a_patient_in_one_fold():
    labels = read_labels(shared("eyepacs-labels"), EYEPACS2015)
    assert len(labels) == 35126
    folds = assign_folds(labels, 5, seed=42, competition=EYEPACS2015)
    patient = folds["id"].str.split("_").str[0]
    assert (folds.groupby(patient)["fold"].nunique() == 1).all(), "no patient in two folds"
    share = pd.crosstab(folds["fold"], folds["grade"], normalize="index")
    assert (share.max() - share.min()).max() < 0.02, "grade balance holds per fold"


def test_too_few_images(tiny_aptos):
    labels = read_labels(tiny_aptos, APTOS2019).head(3)
    with pytest.raises(UserError, match="cannot make 5 folds"):
        assign_folds(labels, 5, seed=0, competition=APTOS2019)


def test_more_folds_than_patients_is_one_line():
    from retinopathy.competitions import EYEPACS2015
    from retinopathy.errors import UserError

    labels = pd.DataFrame({"id": ["1_left", "1_right", "2_left", "2_right", "3_left", "3_right"],
                           "grade": [0, 0, 1, 1, 2, 2]})
    with pytest.raises(UserError, match=r"6 labelled images are 3 patients \(with their copies\), too few for 4 "
                                        r"folds; lower n_folds"):
        assign_folds(labels, 4, seed=0, competition=EYEPACS2015)
