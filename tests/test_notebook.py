"""The Colab notebook: stored without outputs, and executed headless in demo mode on a tiny synthetic competition."""

import json
import subprocess

import nbformat
import pandas as pd
import pytest

from conftest import REPO, runtime_without_library

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


def test_outputs_are_stripped_in_git():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_readme_links_to_colab():
    assert "colab.research.google.com/github/" in (REPO / "README.md").read_text()


def test_every_cell_compiles_and_runs_real_commands():
    """The fast smoke of the notebook (its full run below is slow): each code cell is valid Python and every
    `run("<command>", …)` names a real subcommand."""
    import re

    from retinopathy.commands import COMMANDS

    nb = nbformat.read(NOTEBOOK, as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    for i, source in enumerate(sources):
        compile(source, f"cell {i}", "exec")
    used = set(re.findall(r'\brun\("([a-z-]+)"', "\n".join(sources)))
    assert used and used <= set(COMMANDS), used - set(COMMANDS)
    assert {"train", "predict", "kernel", "export-onnx"} <= used


@pytest.mark.slow
def test_notebook_runs_in_demo_mode_in_a_fresh_environment(tmp_path, monkeypatch):
    """Run all, as on a fresh Colab runtime: the library is not installed, the runtime has its own torch; the
    install cell installs it for real (not editable) and the rest runs on it."""
    from nbclient import NotebookClient

    venv = runtime_without_library(tmp_path)
    python = venv / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import retinopathy"], capture_output=True).returncode != 0
    spec = tmp_path / "jupyter" / "kernels" / "fresh-runtime"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh runtime", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("RETINOPATHY_NOTEBOOK_DEMO", "1")
    monkeypatch.setenv("RETINOPATHY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RETINOPATHY_OUTPUT_DIR", str(tmp_path))
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="fresh-runtime",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    shown = subprocess.run([str(python), "-m", "pip", "show", "-f", "retinopathy"], capture_output=True, text=True)
    assert f"Location: {next((venv / 'lib').glob('python3*/site-packages'))}" in shown.stdout, \
        "the install cell installed the library into the fresh environment, not as an editable link"
    decisions = pd.read_csv(tmp_path / "data" / "cleaning" / "synthetic-debug.csv")
    assert decisions["action"].tolist() == ["drop"], "the cleaner's choice was saved for the pipeline"
    assert (tmp_path / "submissions" / "debug.csv").is_file()
    assert (tmp_path / "reports" / "debug" / "index.html").is_file()
    report = json.loads((tmp_path / "models" / "debug" / "fold0" / "onnx.json").read_text())
    assert report["onnx"]["grade_agreement"] == 1
    assert (tmp_path / "models" / "debug" / "fold0" / "model-int8.onnx").is_file()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "KAGGLE_KEY" not in text
    assert "fold 1: QWK" in text, "training's progress is shown in the notebook"
    assert "GPU: False, recommended config: aptos_cpu_pretrained" in text, "the recipe for the runtime, unchanged"
    assert "set KAGGLE_DATASET and KAGGLE_KERNEL in the first cell to submit; skipped" in text, \
        "Run all reaches the end: without kernel ids the APTOS submit cell says why it skips"
