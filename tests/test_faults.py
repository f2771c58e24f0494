"""Faults a user meets: two runs of one fold at once, concurrent reports, broken exports and checkpoints. Each is
one line or is prevented, never a traceback or a corrupt result."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from retinopathy.errors import UserError
from retinopathy.experiment import Experiment
from retinopathy.paths import Paths

from conftest import debug_config, run_script, tiny_pipeline


# ----------------------------------------------------------------------------------------- concurrent runs
def test_a_second_run_of_a_fold_in_training_is_refused_naming_the_holder(tiny_aptos, tmp_path):
    import fcntl

    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.training.train import train_fold

    experiment = Experiment(debug_config(tiny_aptos, "locked"), Paths(data=tmp_path / "data", output=tmp_path))
    lock = experiment.fold_dir(0) / ".lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:  # another run training fold 0 holds this
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(UserError, match=r"fold 0 of .*locked is in use by process 4242"):
            train_fold(experiment, 0, verbose=False)
    assert not (experiment.fold_dir(0) / "history.csv").exists(), "the refused run wrote nothing"


def test_concurrent_reports_lose_no_row_of_the_results_table(tiny_aptos, tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_rows, args=(tiny_aptos, tmp_path, k, 20)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    table = pd.read_csv(tmp_path / "reports" / "results.csv")
    assert len(table) == 80 and sorted(table["experiment"].value_counts()) == [20] * 4


def _append_rows(raw, root, k: int, n: int) -> None:
    from retinopathy.reports.results import append_results

    for i in range(n):  # each its own config: a rerun of the same one replaces its row
        experiment = Experiment(debug_config(raw, f"writer{k}", f"seed={i}"), Paths(data=root / "data", output=root))
        append_results(experiment, {"folds": [0.5], "mean": 0.5, "std": 0.0, "pooled": 0.5}, None, None)


# ----------------------------------------------------------------------------------------- broken files
@pytest.fixture(scope="module")
def one_fold(tiny_aptos, tmp_path_factory):
    """One trained fold, shared by the broken-file tests (each damages a copy, or damages it last)."""
    experiment, _ = tiny_pipeline(tiny_aptos, tmp_path_factory.mktemp("broken"), "broken", folds=[0])
    return experiment


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_broken_export_is_one_line_wherever_it_is_loaded(one_fold, tmp_path, damage):
    from retinopathy.inference.grader import Grader

    copy = Path(shutil.copytree(one_fold.fold_dir(0), tmp_path / "fold0"))
    data = (copy / "export.pkl").read_bytes()
    (copy / "export.pkl").write_bytes(b"" if damage == "empty" else data[:len(data) // 3])
    with pytest.raises(UserError, match=r"export.pkl: not a complete export .*: delete it and train this fold again") \
            as refused:
        Grader([copy / "export.pkl"])
    assert "\n" not in str(refused.value)


def test_a_broken_checkpoint_offers_the_fix_instead_of_a_traceback(one_fold):
    from retinopathy.training.train import train_fold

    out = one_fold.fold_dir(0)
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "last.pth").write_bytes(b"PK\x03\x04 cut short")
    run = f"{one_fold.config.fingerprint}:{one_fold.folds_digest()}"
    state = one_fold.fold_files(0).resume_state
    state.write_text(json.dumps({"phase": 0, "epoch": 0, "best": 0.1, "fingerprint": run,
                                                "smooth_loss": [1.0, 1]}))
    try:
        with pytest.raises(UserError, match=r"last.pth: the interrupted run's checkpoint cannot be read .* delete "
                                            r".*resume.json to train this fold from the start"):
            train_fold(one_fold, 0, verbose=False, resume=True)
    finally:
        state.unlink(missing_ok=True)
        (out / "checkpoints" / "last.pth").unlink(missing_ok=True)


def test_folds_trained_before_the_labels_were_cleaned_are_not_current(one_fold):
    """Relabelling images changes the folds file: a fold trained on the old rows is retrained, not 'up to date'."""
    from retinopathy.data.cleaning import decisions_path, record_decisions
    from retinopathy.data.folds import make_folds

    assert one_fold.fold_is_current(0)
    ids = pd.read_csv(one_fold.folds_csv, dtype={"id": str})["id"][:5].tolist()
    decisions = decisions_path(one_fold)
    record_decisions(decisions, drops=[], relabels={i: 4 for i in ids})
    try:
        make_folds(one_fold, verbose=False)
        assert not one_fold.fold_is_current(0), "trained on other labels than the folds now hold"
        with pytest.raises(UserError, match="trained on other rows than"):
            one_fold.check_exports([0])
    finally:  # the labels as they were: the same folds file, so the fold is current again
        decisions.unlink()
        make_folds(one_fold, verbose=False)
    assert one_fold.fold_is_current(0)


@pytest.mark.slow  # script runs over several broken files
def test_predict_over_a_broken_export_is_one_line(one_fold):
    export = one_fold.fold_dir(0) / "export.pkl"
    export.write_bytes(export.read_bytes()[:1000])  # last in this file: the fold is not used after it
    work = one_fold.paths.output
    done = run_script("predict.py", "--config", str(one_fold.dir / "config.yaml"), "--data-dir",
                      str(one_fold.paths.data), "--folds", "0", cwd=work, env={"RETINOPATHY_OUTPUT_DIR": str(work)})
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
    assert "export.pkl: not a complete export" in done.stderr
