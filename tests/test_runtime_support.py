"""What the runtimes users have need beyond a pinned install (CI's `make test-runtimes` installs those): a known-bad
fastai / fastcore pair refused in one line, the Kaggle kernel's GPU machine, and folds side by side spread over
the visible GPUs."""

import inspect
import json
import subprocess

import pytest

from retinopathy.errors import UserError

from conftest import debug_config


def test_a_fastai_that_fastcore_2_breaks_is_refused_in_one_line(tiny_aptos, tmp_path, monkeypatch):
    import importlib.metadata

    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.training.models import stack_problem
    from retinopathy.training.train import train_fold

    assert stack_problem("2.8.7", "2.2.12") and stack_problem("2.8.5", "2.0.0")
    assert stack_problem("2.8.8", "2.2.12") is None and stack_problem("2.8.7", "1.14.5") is None
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: {"fastai": "2.8.7", "fastcore": "2.2.12"}.get(name) or real(name))
    experiment = Experiment(debug_config(tiny_aptos, "stack"), Paths(data=tmp_path / "data", output=tmp_path))
    with pytest.raises(UserError) as refused:
        train_fold(experiment, 0, verbose=False)
    message = str(refused.value)
    assert "\n" not in message and "fastai 2.8.7 cannot run with fastcore 2.2.12" in message
    assert "pip install 'fastai>=2.8.8'" in message and not (tmp_path / "models").exists(), "refused before training"


def test_the_kernel_asks_kaggle_for_a_gpu_machine_its_torch_runs_on(tiny_aptos, tmp_path):
    from kaggle.api import kaggle_api_extended

    from retinopathy.experiment import Experiment
    from retinopathy.kernel.build import DEFAULT_GPU, check_gpu, write_kernel
    from retinopathy.paths import Paths

    # the field and value the official client reads from kernel-metadata.json
    client = inspect.getsource(kaggle_api_extended)
    assert 'get_or_default(meta_data, "machine_shape", None)' in client and f"({DEFAULT_GPU})" in client
    experiment = Experiment(debug_config(tiny_aptos, "gpu-kernel"), Paths(data=tmp_path / "data", output=tmp_path))
    for gpu, shape in ((DEFAULT_GPU, "NvidiaTeslaT4"), (None, None)):
        folder = write_kernel(experiment, "you/folds", "you/run", "torch", check_gpu(gpu), ["retinopathy"],
                              tmp_path / f"kernel-{gpu}")
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        assert meta["enable_gpu"] is bool(gpu) and meta.get("machine_shape") == shape
    with pytest.raises(UserError, match="NvidiaTeslaP100: retired by Kaggle"):
        check_gpu("NvidiaTeslaP100")


def test_folds_side_by_side_each_get_one_of_the_visible_gpus(tiny_aptos, tmp_path, monkeypatch):
    from retinopathy import launcher
    from retinopathy.device import visible_gpus
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus() == ["0", "1"]
    plan = launcher.launch_plan([0, 1, 2, 3, 4], 3, ["0", "1"])
    assert [plan[k]["CUDA_VISIBLE_DEVICES"] for k in range(5)] == ["0", "1", "0", "1", "0"]
    assert {p["OMP_NUM_THREADS"] for p in plan.values()} == {"3"}
    assert "CUDA_VISIBLE_DEVICES" not in launcher.launch_plan([0, 1], 2, [])[0], "no GPU: nothing to pin"

    experiment = Experiment(debug_config(tiny_aptos, "two-gpus", "folds_at_once=2"),
                            Paths(data=tmp_path / "data", output=tmp_path))
    seen = {}

    def fake_run(command, env, stdout, stderr, **options):  # the fold process, as launched: its environment
        fold = int(command[command.index("--fold") + 1])
        seen[fold] = env["CUDA_VISIBLE_DEVICES"]
        stdout.write(f"fold {fold}: QWK 0.5 (best epoch 1/1) in 1s\n")
        stdout.flush()
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    launcher.train_side_by_side(experiment, [0, 1])
    assert seen == {0: "0", 1: "1"}, "two folds, one on each GPU"


def test_the_kernel_builds_its_wheel_from_a_clone_when_the_library_is_installed_regularly(tmp_path, monkeypatch):
    from retinopathy.kernel import build

    monkeypatch.setattr(build, "__file__", str(tmp_path / "site-packages" / "retinopathy" / "kernel" / "build.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="run this from a clone of the repository"):
        build.source_root()
    from conftest import REPO

    monkeypatch.chdir(REPO)  # as the Colab notebook runs it: from its clone
    assert build.source_root() == REPO


def test_an_export_naming_what_this_version_removed_is_one_line(tmp_path, monkeypatch):
    """A learner pickled by an earlier release names functions that have moved (its metrics): retrain, one line."""
    import torch

    import retinopathy.metrics as metrics
    from retinopathy.experiment import load_learner_quietly

    def output_kappa(outputs, targets):
        return 0.0

    output_kappa.__module__, output_kappa.__qualname__ = "retinopathy.metrics", "output_kappa"
    monkeypatch.setattr(metrics, "output_kappa", output_kappa, raising=False)
    torch.save({"metrics": [output_kappa]}, tmp_path / "export.pkl")
    monkeypatch.delattr(metrics, "output_kappa")
    with pytest.raises(UserError) as refused:
        load_learner_quietly(tmp_path / "export.pkl")
    assert "\n" not in str(refused.value) and "made by an earlier version" in str(refused.value)
    assert "'output_kappa'" in str(refused.value) and str(refused.value).endswith("train this fold again")


def test_the_runtime_check_refuses_a_disk_too_small_for_an_environment_before_pip_fills_it(tmp_path):
    import runtime_stack

    runtime_stack.check_disk(tmp_path, needed=1)  # room enough: nothing said
    with pytest.raises(SystemExit) as refused:
        runtime_stack.check_disk(tmp_path, needed=10**18)
    message = str(refused.value)
    assert str(tmp_path) in message and "GB free" in message and "--discard" in message and "\n" not in message
