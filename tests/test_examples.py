"""Every command a user reads, run as written: the examples in each stage's --help and the README's commands, those
that need neither the network nor a downloaded competition (they run elsewhere against the fake Kaggle server), in a
fresh working folder; and the demo's figures in the README against what a fresh run prints."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from retinopathy.commands import COMMANDS

from conftest import REPO

COMMAND = Path(sys.executable).parent / "retinopathy"
#: the order a user would run the stages' examples in: data first, then what reads it
ORDER = ["synthesize", "pipeline", "verify", "preprocess", "folds", "train", "predict", "interpret", "export-onnx",
         "kernel", "contact-sheet", "serve", "download", "submit"]


def joined(lines: list[str]) -> list[str]:
    """Shell lines with their comments dropped and ``\\`` continuations joined."""
    out, pending = [], ""
    for line in lines:
        line = pending + re.sub(r"\s+#.*$", "", line.strip())
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        out += [part.strip() for part in line.split(" && ") if part.strip()]
    return out


def help_examples(stage: str) -> list[str]:
    """The ``retinopathy …`` lines of a stage's --help (its description, before the options)."""
    import importlib

    description = importlib.import_module(f"retinopathy.commands.{COMMANDS[stage][0]}").__doc__ or ""
    return [c for c in joined(description.splitlines()) if c.startswith("retinopathy ")]


def readme_commands() -> list[str]:
    """The ``retinopathy …`` commands of the README's shell blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return [c for block in blocks for c in joined(block.splitlines()) if c.startswith("retinopathy ")]


def why_not_here(command: str) -> str | None:
    """Why a command cannot run in a test (the network, a downloaded competition, a server that runs until
    stopped), or None."""
    words = shlex.split(command)
    if words[1] in ("download", "submit"):
        return "talks to Kaggle"
    if words[1] == "kernel" and "--no-push" not in words:
        return "pushes to Kaggle"
    if words[1] == "serve":
        return "serves until stopped"
    if ("--competition" in words and words[1] != "synthesize") or \
            any(w in ("aptos_cpu", "aptos_cpu_pretrained", "aptos_gpu", "eyepacs_gpu") for w in words):
        return "needs the downloaded competition"
    if any(w in ("x.yaml", "...") or w.startswith("<") for w in words):
        return "a placeholder"
    if any(w.startswith("../shared/data") for w in words) and not (REPO.parent / "shared" / "data").is_dir():
        return "needs ../shared/data"
    return None


def run_as_written(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINOPATHY_")}
    return subprocess.run([str(COMMAND), *words[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh working folder beside a ``shared`` link, so ``../shared/data`` reads as it does from a checkout."""
    root = tmp_path_factory.mktemp("examples")
    if (REPO.parent / "shared").is_dir():
        (root / "shared").symlink_to(REPO.parent / "shared")
    (root / "work").mkdir()
    return root / "work"


def test_every_stage_has_examples_and_they_are_in_the_order():
    assert set(ORDER) == set(COMMANDS)
    assert all(help_examples(stage) for stage in COMMANDS), "every stage's --help shows how to run it"


@pytest.mark.slow
def test_every_help_example_runs_as_written(workdir):
    ran = []
    for stage in ORDER:
        for command in help_examples(stage):
            if why_not_here(command):
                continue
            done = run_as_written(command, workdir)
            assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            ran.append(command)
    assert len(ran) >= 15, ran


@pytest.mark.slow
def test_the_readme_commands_run_and_the_demo_prints_what_the_readme_says(workdir):
    readme = (REPO / "README.md").read_text()
    cv, test = re.search(r"make demo .*CV QWK (\d\.\d{3}), test QWK (\d\.\d{3})", readme).groups()
    demo = subprocess.run(shlex.split(re.search(r"^demo: .*\n\t(.*)$", (REPO / "Makefile").read_text(),
                                                re.M).group(1).replace("$(BIN)/", str(COMMAND.parent) + "/")),
                          cwd=workdir, capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr[-2000:]
    printed_cv = re.search(r"pooled out-of-fold QWK (\d\.\d+)", demo.stdout).group(1)
    printed_test = re.search(r"hidden answers: (\d\.\d+)", demo.stdout).group(1)
    assert (f"{float(printed_cv):.3f}", f"{float(printed_test):.3f}") == (cv, test), "the README's demo figures"
    table = re.search(r"^\| `demo` \|.*$", readme, re.M).group(0)
    assert f"| {cv} (synthetic) | {test} (synthetic) |" in table
    quoted = re.search(r"What `make demo` prints.*?```text\n(.*?)```", readme, re.S).group(1).splitlines()
    assert quoted and all(line in demo.stdout.splitlines() for line in quoted), "the demo's lines the README quotes"
    ran = []
    for command in readme_commands():
        if why_not_here(command):
            continue
        done = run_as_written(command, workdir)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        ran.append(command)
    assert any("export-onnx" in c for c in ran), ran
