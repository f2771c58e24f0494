"""Several labelled sets in one training: an extra set's images join every fold's training part (with their
sampling share), never validation, so CV, OOF and the thresholds stay on the target competition."""

import shutil

import numpy as np
import pandas as pd
import pytest

from retinopathy.errors import UserError

from conftest import debug_config, tiny_pipeline


@pytest.mark.parametrize("value", ["x*0", "x*abc", "*2", "x*-1", "x*nan"])
def test_a_malformed_share_is_one_line(tiny_aptos, value):
    with pytest.raises(UserError, match=r"extra_data '.*': write FOLDER or FOLDER\*SHARE") as refused:
        debug_config(tiny_aptos, "extra", f"extra_data={value}")
    assert "\n" not in str(refused.value)


def test_the_sets_content_and_share_are_in_the_fingerprint(tiny_aptos, tiny_eyepacs, tmp_path):
    plain = debug_config(tiny_aptos, "extra")
    with_extra = debug_config(tiny_aptos, "extra", f"extra_data={tiny_eyepacs}")
    assert with_extra.extra_sources == [(str(tiny_eyepacs), 1.0)] and with_extra.fingerprint != plain.fingerprint
    assert debug_config(tiny_aptos, "extra", f"extra_data={tiny_eyepacs}*0.5").fingerprint != with_extra.fingerprint
    moved = tmp_path / "elsewhere" / tiny_eyepacs.name  # the same set reached by another path: the same model
    shutil.copytree(tiny_eyepacs, moved, symlinks=True)
    assert debug_config(tiny_aptos, "extra", f"extra_data={moved}").fingerprint == with_extra.fingerprint
    labels = moved / "trainLabels.csv"
    labels.write_text(labels.read_text().replace(",0\n", ",4\n", 1))  # one grade changed: another model
    assert debug_config(tiny_aptos, "extra", f"extra_data={moved}").fingerprint != with_extra.fingerprint


def test_extra_images_train_every_fold_and_validate_none(tiny_aptos, tiny_eyepacs, tmp_path, capsys):
    from retinopathy.competitions import APTOS2019, EYEPACS2015, read_labels
    from retinopathy.data.folds import extra_data_rows, training_table
    from retinopathy.inference.oof import load_oof
    from retinopathy.training.dataloaders import build_dataloaders

    experiment, result = tiny_pipeline(tiny_aptos, tmp_path, "extra", f"extra_data={tiny_eyepacs}*0.5", folds=[0])
    said = capsys.readouterr().out
    extra = extra_data_rows(experiment)
    eyepacs_ids = set(read_labels(tiny_eyepacs, EYEPACS2015)["id"])
    assert len(extra) > 20 and set(extra["id"]) <= eyepacs_ids and (extra["fold"] == -1).all()
    assert (extra["share"] == 0.5).all() and f"extra_data: {len(extra)} images added to training" in said
    assert f"preprocess: extra_data {tiny_eyepacs.name}:" in said
    oof = load_oof(experiment)
    assert set(oof["id"]) <= set(read_labels(tiny_aptos, APTOS2019)["id"]), "validation only on the target"
    assert result.cv["n"] == len(oof) and not set(oof["id"]) & eyepacs_ids
    table = pd.concat([training_table(experiment), extra.drop(columns=["source"])], ignore_index=True)
    dls = build_dataloaders(table, experiment, 0)
    own = training_table(experiment)
    assert len(dls.train.items) == (own["fold"] != 0).sum() + len(extra), "the extra images are in training"
    assert len(dls.valid.items) == (own["fold"] == 0).sum()
    weights, items = np.asarray(dls.train.wgts, float), dls.train.items
    extra_rows, grades = items["share"].notna().to_numpy(), items["grade"].to_numpy(int)
    compared = 0
    for grade in np.unique(grades):  # within a grade, an extra image is drawn half as often as one of APTOS
        theirs, ours = weights[extra_rows & (grades == grade)], weights[~extra_rows & (grades == grade)]
        if len(theirs) and len(ours):
            assert np.allclose(theirs, 0.5 * ours[0]) and np.allclose(ours, ours[0])
            compared += 1
    assert compared >= 2


def test_a_set_is_a_folder_or_a_competition_under_the_data_root(tiny_eyepacs, tmp_path):
    from retinopathy.cli import extra_folder
    from retinopathy.paths import Paths

    paths = Paths.default(data_dir=tmp_path / "data")
    assert extra_folder("eyepacs2015", paths) == paths.raw("diabetic-retinopathy-detection")
    assert extra_folder(str(tiny_eyepacs), paths) == tiny_eyepacs.resolve()
    with pytest.raises(UserError, match="extra_data: idrid: no such folder, nor a competition's name"):
        extra_folder("idrid", paths)


def test_the_target_itself_or_its_folder_name_is_refused(tiny_aptos, tiny_eyepacs, tmp_path):
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths

    paths = Paths(data=tmp_path / "data", output=tmp_path)
    itself = Experiment(debug_config(tiny_aptos, "extra", f"extra_data={tiny_aptos}"), paths)
    with pytest.raises(UserError, match="is this experiment's own data"):
        itself.extra_sets()
    namesake = tmp_path / "other" / itself.config.dataset_name  # another set, filed under the target's name
    shutil.copytree(tiny_eyepacs, namesake)
    with pytest.raises(UserError, match="has the folder name .* their prepared images would share one folder"):
        Experiment(debug_config(tiny_aptos, "extra", f"extra_data={namesake}"), paths).extra_sets()
    manifest = tmp_path / "data" / "processed" / itself.config.dataset_name
    assert not manifest.exists(), "nothing was prepared, so nothing was overwritten"


def test_a_copy_of_a_validation_photograph_never_trains_that_fold(tiny_aptos, tmp_path, capsys):
    from retinopathy.data.folds import extra_data_rows, make_folds
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.preprocessing.stage import preprocess

    copy = tmp_path / "sets" / "a-copy"  # the target under another name
    shutil.copytree(tiny_aptos, copy)
    experiment = Experiment(debug_config(tiny_aptos, "extra", f"extra_data={copy}"),
                            Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment)
    folds = make_folds(experiment, verbose=False)
    for fold in (0, 1):
        extra = extra_data_rows(experiment, fold)
        validation = set(folds.loc[folds["fold"] == fold, "id"])
        assert validation and not validation & set(extra["id"]), "no copy of a validation photograph trains"
        assert extra.attrs["copies"]["a-copy"] >= len(validation)
