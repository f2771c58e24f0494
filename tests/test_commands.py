"""The ``retinopathy`` command: its stages as subcommands, configs found by name from any directory, and the config
keys in ``--help``; and the dependency layers it is installed by."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from retinopathy.commands import COMMANDS
from retinopathy.config import Config, find_config, load_config, shipped_configs
from retinopathy.errors import UserError

from conftest import REPO

COMMAND = Path(sys.executable).parent / "retinopathy"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_command_lists_every_stage(tmp_path):
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ["download", "verify", "preprocess", "folds", "train", "predict", "interpret", "submit", "kernel",
                 "export-onnx", "serve", "pipeline", "synthesize"]:
        assert re.search(rf"^  {name}\s", done.stdout, re.M), f"{name} missing from retinopathy --help"
    assert set(COMMANDS) >= {"train", "kernel"}


def test_an_unknown_command_is_one_line_with_a_suggestion(tmp_path):
    done = run("trian", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "did you mean 'train'" in done.stderr


def test_train_help_lists_every_config_key_with_its_default(tmp_path):
    done = run("train", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: retinopathy train")
    chosen = load_config("demo")  # the config a stage reads unless --config names another
    for f in dataclasses.fields(Config):
        value = getattr(chosen, f.name)
        shown = value if value != "" else repr("")
        assert f"  {f.name}={shown}  [" in done.stdout, f"{f.name} missing from train --help"
        assert f.metadata["help"][:30] in done.stdout.replace("\n      ", " ")
    script = subprocess.run([sys.executable, str(REPO / "scripts" / "train_fold.py"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    same_options = script.stdout.partition("\n\n")[2] == done.stdout.partition("\n\n")[2]
    assert same_options, "scripts/train_fold.py and retinopathy train are the same command"


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"aptos_cpu", "demo", "debug"} <= set(shipped_configs())
    assert load_config("aptos_cpu").name == "aptos_cpu"
    assert find_config("configs/demo.yaml") == find_config("demo.yaml") == find_config("demo")
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: aptos_cpu\nepochs: 1\n")
    config = load_config(mine)
    assert (config.name, config.epochs, config.arch) == ("mine", 1, load_config("aptos_cpu").arch)
    with pytest.raises(UserError, match="nosuch.yaml not found; shipped configs: .*aptos_cpu"):
        load_config("nosuch.yaml")


def test_a_shipped_config_runs_from_another_directory(tmp_path):
    dataset = load_config("debug").dataset_name
    made = run("synthesize", f"data/raw/{dataset}", "--n-train", "12", "--n-test", "4", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    done = run("preprocess", "--config", "debug", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "data" / "processed" / dataset).rglob("*.png"))) == 16
    wrong = run("folds", "--config", "no_such_config", cwd=tmp_path)
    assert wrong.returncode == 2 and "shipped configs:" in wrong.stderr and wrong.stderr.count("\n") == 1


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_dependencies_come_in_layers():
    project = _project()
    base, extras = _names(project["dependencies"]), project["optional-dependencies"]
    assert not base & {"torch", "torchvision", "fastai", "timm", "starlette", "uvicorn", "onnxruntime", "kaggle"}, \
        "the base package installs without the torch stack or the server"
    assert {"torch", "torchvision", "fastai", "timm", "albumentations", "kaggle", "six"} <= _names(extras["train"])
    assert {"starlette", "uvicorn", "onnxruntime", "python-multipart"} <= _names(extras["serve"])
    assert not _names(extras["serve"]) & {"torch", "fastai"}
    assert extras["all"] == ["retinopathy[train,serve]"]
    assert project["scripts"]["retinopathy"] == "retinopathy.commands:main"


def test_every_upper_bound_says_why():
    """An upper bound makes pip replace a preinstalled release (Colab, Kaggle): each one needs its reason beside
    it."""
    text = (REPO / "pyproject.toml").read_text()
    section = text[text.index("dependencies = ["):text.index("dev = [")]
    bounded = [line.strip() for line in section.splitlines() if re.search(r'"[^"]*<[^"]*"', line)]
    assert all("#" in line for line in bounded), f"upper bound without a reason: {bounded}"
    assert not any(re.match(r'"(torch|torchvision)\b[^"]*<', line) for line in bounded)


def runtime_pins(name: str) -> dict[str, str]:
    """The pinned releases of ``runtimes/<name>.txt`` and its Python."""
    text = (REPO / "runtimes" / f"{name}.txt").read_text()
    pins = dict(line.split("==") for line in text.splitlines() if "==" in line and not line.startswith("#"))
    return {"python": re.search(r"^# python: (\S+)$", text, re.M).group(1), **pins}


def test_the_oldest_runtime_ci_installs_is_the_declared_lower_bound():
    from packaging.version import Version

    oldest = runtime_pins("colab-2025")
    train = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]: r for r in _project()["optional-dependencies"]["train"]}
    for name in ("torch", "torchvision", "fastai", "timm"):
        floor = re.search(r">=([\d.]+)", train[name]).group(1)
        assert Version(floor) == Version(oldest[name]), \
            f"{name}: declared >={floor}, the oldest runtime has {oldest[name]}"


def test_one_name_per_stage_scripts_are_named_as_the_stages():
    wrappers = {p.stem for p in (REPO / "scripts").glob("*.py")}
    stages = {module for module, _ in COMMANDS.values()}
    assert wrappers == stages | {"train_fold"}, "scripts/ holds one wrapper per stage, plus train_fold.py"
    for path in (REPO / "scripts").glob("*.py"):
        module = "train" if path.stem == "train_fold" else path.stem
        assert f"from retinopathy.commands.{module} import main" in path.read_text(), path.name


def stage_help(stage: str, capsys) -> str:
    """A stage's --help, from its main() in this process (as `retinopathy <stage> --help` prints it)."""
    import importlib

    module = importlib.import_module(f"retinopathy.commands.{COMMANDS[stage][0]}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_stage_takes_the_same_options(capsys):
    for stage in COMMANDS:
        text = stage_help(stage, capsys)
        for option in ("--config CONFIG", "--data-dir", "--raw-dir", "--competition", "key=value"):
            assert option in text, f"retinopathy {stage} --help lacks {option}"
        assert "(default: demo)" in text, f"{stage}: one default config for every stage"
        assert "python scripts/" not in text, f"{stage}: one vocabulary, retinopathy <stage>"


def test_a_closed_pipe_ends_quietly(tmp_path):
    for args in (["--help"], ["train", "--help"]):
        reader = subprocess.Popen([str(COMMAND), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reader.stdout.close()  # the reader went away before anything was read (as `| head -0`)
        stderr = reader.stderr.read().decode()
        reader.wait(timeout=60)
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_the_readme_is_a_short_guide_and_its_compatibility_table_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    head = "\n".join(readme.splitlines()[:40])
    assert "make demo" in head and "| config | hardware |" in head, "the config for each hardware, first screenful"
    assert not re.search(r"#\d+\b|\bissue\b", readme), "no issue numbers or tracker talk in the guide"
    assert "python scripts/" not in readme.replace("python scripts/<stage>.py", ""), "one vocabulary"
    for path in sorted((REPO / "runtimes").glob("*.txt")):
        pins = runtime_pins(path.stem)
        row = re.search(rf"^\|[^|]*`runtimes/{path.name}`[^|]*\|(.*)$", readme, re.M)
        assert row, f"runtimes/{path.name} has no row in the README's compatibility table"
        cells = dict(zip(["python", "torch", "torchvision", "fastai", "fastcore", "timm"],
                         [c.strip() for c in row.group(1).split("|")], strict=False))
        for key, pinned in pins.items():
            assert cells.get(key) == pinned, f"README says {key} {cells.get(key)} for {path.name}, which pins {pinned}"
    shipped = set(shipped_configs()) - {"debug"}
    listed = set(re.findall(r"^\| `(\w+)` \| ", readme, re.M))
    assert shipped <= listed, f"configs missing from the hardware table: {shipped - listed}"


@pytest.mark.parametrize("command, option, value", [
    ("serve", "--port", "70000"), ("serve", "--max-mb", "-1"), ("serve", "--workers", "0"),
    ("synthesize", "--n-train", "-5"), ("synthesize", "--max-side", "1"),
    ("contact-sheet", "--size", "0"), ("contact-sheet", "--size", "-5"), ("contact-sheet", "--size", "30000"),
    ("contact-sheet", "--limit", "-1"), ("export-onnx", "--calibration-images", "0"),
    ("export-onnx", "--calibration-images", "-5"), ("export-onnx", "--check-images", "-3"),
    ("preprocess", "--workers", "64"), ("verify", "--workers", "0"), ("interpret", "--top", "0"),
])
def test_an_option_out_of_its_range_is_one_line_before_anything_runs(command, option, value, tmp_path, capsys):
    import importlib

    from retinopathy.commands import COMMANDS as modules

    main = importlib.import_module(f"retinopathy.commands.{modules[command][0]}").main
    args = ([str(tmp_path / "out")] if command in ("synthesize", "contact-sheet") else []) + [option, value]
    with pytest.raises(SystemExit) as ended:
        main(args)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert ended.value.code == 2 and f"argument {option}: must be between " in error and error.endswith(f"not {value}")
    assert not (tmp_path / "out").exists(), "nothing ran"
