"""pretrained=True goes through torchvision's own weights cache: offline it uses a cached file, and with none it
stops with one line saying where the file goes."""

import pytest
import torch
import torchvision
from test_train import _tiny_experiment

from retinopathy.data.folds import training_table
from retinopathy.errors import UserError
from retinopathy.training.dataloaders import build_dataloaders
from retinopathy.training.models import build_learner, torchvision_weights_file


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and no way out: any download attempt is refused at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return tmp_path / "torch-home"


def _learner(experiment):
    table = training_table(experiment)
    return build_learner(build_dataloaders(table, experiment, 0), experiment, experiment.fold_dir(0))


def test_cached_weights_file_is_used_offline(tiny_aptos, tmp_path, offline):
    experiment = _tiny_experiment(tiny_aptos, tmp_path, "pretrained=true", "arch=resnet18")
    weights_file = torchvision_weights_file("resnet18")
    assert weights_file.is_relative_to(offline)
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.125)  # recognisable weights
    weights_file.parent.mkdir(parents=True)
    torch.save(state, weights_file)
    learn = _learner(experiment)
    first_conv = learn.model[0][0].weight
    assert torch.allclose(first_conv, torch.full_like(first_conv, 0.125)), "the body starts from the cached file"
    assert not first_conv.requires_grad, "a pretrained body is frozen for the first phase"


def test_missing_weights_offline_is_one_clear_line(tiny_aptos, tmp_path, offline):
    experiment = _tiny_experiment(tiny_aptos, tmp_path, "pretrained=true", "arch=resnet18")
    with pytest.raises(UserError) as error:
        _learner(experiment)
    message = str(error.value)
    assert str(torchvision_weights_file("resnet18")) in message and "pretrained=false" in message
    assert "\n" not in message


def test_timm_architecture_by_name(tiny_aptos, tmp_path):
    experiment = _tiny_experiment(tiny_aptos, tmp_path, "pretrained=false", "arch=resnet10t")
    learn = _learner(experiment)
    x = torch.zeros(2, 3, 32, 32)
    assert learn.model.eval()(x).shape == (2, 5)


def test_timm_prefix_takes_timm_where_torchvision_has_the_name(tiny_aptos, tmp_path):
    """arch=timm:resnet18 is timm's resnet18 (its residual branches start at zero), not torchvision's."""
    import timm

    plain = _learner(_tiny_experiment(tiny_aptos, tmp_path, "pretrained=false", "arch=resnet18"))
    forced = _learner(_tiny_experiment(tiny_aptos, tmp_path, "pretrained=false", "arch=timm:resnet18"))
    assert not any(isinstance(m, timm.models.resnet.ResNet) for m in plain.model.modules())
    assert any(isinstance(m, timm.models.resnet.ResNet) for m in forced.model.modules())
    last_norms = [b.bn2.weight for b in forced.model.modules() if isinstance(b, timm.models.resnet.BasicBlock)]
    assert last_norms and all(float(w.abs().sum()) == 0 for w in last_norms)
    with pytest.raises(UserError, match="unknown arch 'resnet_nope': not a timm model name"):
        _learner(_tiny_experiment(tiny_aptos, tmp_path, "arch=timm:resnet_nope"))


def test_unknown_architecture(tiny_aptos, tmp_path):
    experiment = _tiny_experiment(tiny_aptos, tmp_path, "arch=resnet_not_a_model")
    with pytest.raises(UserError, match="unknown arch 'resnet_not_a_model'"):
        _learner(experiment)
