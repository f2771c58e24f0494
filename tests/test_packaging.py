import re

import tomllib
import yaml

from conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = list(dict.fromkeys(project["dependencies"] + extras["train"] + extras["serve"] + extras["dev"]))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[all,dev]" in pip, "the conda environment installs this project in editable mode"
    listed = [r for r in pip if not r.startswith("-e")]
    assert sorted(listed) == sorted(declared), "environment.yml and pyproject.toml must pin the same versions"


def test_torch_and_torchvision_are_a_matching_pair():
    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    deps = {_name(d): d for d in train}
    assert "six" in deps, "kaggle imports six without declaring it"
    torch_minor = int(re.search(r"torch>=2\.(\d+)", deps["torch"]).group(1))
    vision_minor = int(re.search(r"torchvision>=0\.(\d+)", deps["torchvision"]).group(1))
    assert vision_minor == torch_minor + 15, "torchvision 0.(N+15) is built for torch 2.N"


def test_installed_torchvision_works_with_installed_torch():
    import torch
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
