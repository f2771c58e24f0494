"""The Colab notebook: stored without outputs, and executed headless in demo mode on a tiny synthetic competition."""

import json

import nbformat
import pandas as pd

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"


def test_outputs_are_stripped_in_git():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_readme_links_to_colab():
    assert "colab.research.google.com/github/" in (REPO / "README.md").read_text()


def test_notebook_runs_in_demo_mode(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("RETINOPATHY_NOTEBOOK_DEMO", "1")
    monkeypatch.setenv("RETINOPATHY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RETINOPATHY_OUTPUT_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    decisions = pd.read_csv(tmp_path / "data" / "cleaning" / "synthetic-aptos2019.csv")
    assert decisions["action"].tolist() == ["drop"], "the cleaner's choice was saved for the pipeline"
    assert (tmp_path / "submissions" / "demo.csv").is_file()
    assert (tmp_path / "reports" / "demo" / "index.html").is_file()
    assert json.loads((tmp_path / "models" / "demo" / "fold0" / "onnx.json").read_text())["onnx"]["grade_agreement"] == 1
    assert (tmp_path / "models" / "demo" / "fold0" / "model-int8.onnx").is_file()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "KAGGLE_KEY" not in text
