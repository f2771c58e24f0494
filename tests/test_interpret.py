"""The diagnosis rules on constructed histories."""

import numpy as np
import pandas as pd

from retinopathy.reports.interpret import diagnose


def history(train, valid, qwk=None):
    n = len(train)
    qwk = qwk if qwk is not None else np.linspace(0.2, 0.8, n)
    return pd.DataFrame({"train_loss": train, "valid_loss": valid, "qwk": qwk})


def test_healthy():
    train, valid = [1.2, 0.9, 0.7, 0.6, 0.5, 0.45, 0.42, 0.4], [1.1, 0.9, 0.75, 0.65, 0.6, 0.57, 0.55, 0.55]
    assert diagnose(history(train, valid)) == []


def test_under_fitting():
    train, valid = [1.5, 1.3, 1.2, 1.1, 1.05, 1.0, 0.98, 0.97], [1.2, 1.0, 0.95, 0.9, 0.88, 0.86, 0.85, 0.85]
    verdicts = diagnose(history(train, valid))
    assert len(verdicts) == 1 and verdicts[0].startswith("under-fitting") and "train longer" in verdicts[0]


def test_over_fitting_rising_valid_loss():
    train, valid = [1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05], [0.9, 0.7, 0.6, 0.62, 0.7, 0.8, 0.9, 1.0]
    verdicts = diagnose(history(train, valid))
    assert len(verdicts) == 1 and verdicts[0].startswith("over-fitting: validation loss rising")


def test_over_fitting_swinging_qwk():
    qwk = [0.3, 0.5, 0.6, 0.65, 0.45, 0.7, 0.5, 0.72]
    train, valid = [1.0, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4], [0.9, 0.8, 0.7, 0.65, 0.6, 0.6, 0.6, 0.58]
    verdicts = diagnose(history(train, valid, qwk))
    assert verdicts == [verdicts[0]] and verdicts[0].startswith("unstable: validation QWK swinging")


def test_diverging():
    assert diagnose(history([1.0, 2.0, float("nan")], [1.0, 3.0, 5.0]))[0].startswith("diverging")
    assert diagnose(history([1.0, 1.8, 2.5, 3.0], [1.0, 2.0, 2.5, 3.0]))[0].startswith("diverging")


def test_one_verdict_that_does_not_contradict_itself():
    """Training loss above validation loss (heavy augmentation) and validation loss rising after its best: the
    earlier rules said both "under-fitting ... train longer" and "over-fitting ... use fewer epochs"."""
    verdicts = diagnose(history([1.6, 1.4, 1.3, 1.25, 1.2, 1.15, 1.1, 1.05], [0.9, 0.7, 0.6, 0.62, 0.7, 0.8, 0.9, 1.0]))
    assert len(verdicts) == 1 and verdicts[0].startswith("over-fitting") and "after epoch 3" in verdicts[0]


def test_too_few_epochs_are_not_judged():
    assert diagnose(history([1.5], [1.2]))[0].startswith("too short to judge: 1 epoch")
