from pathlib import Path

from retinopathy.paths import DATA_DIR_ENV, OUTPUT_DIR_ENV, Paths


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(OUTPUT_DIR_ENV, raising=False)
    assert Paths.default().data == tmp_path / "data"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert Paths.default().data == tmp_path / "elsewhere"
    assert Paths.default(data_dir="given").data == tmp_path / "given", "--data-dir beats the environment"


def test_every_output_is_derived_from_two_roots(tmp_path):
    paths = Paths(data=tmp_path / "d", output=tmp_path / "o")
    assert paths.raw("aptos") == tmp_path / "d" / "raw" / "aptos"
    assert paths.processed("aptos", "ben", 512) == tmp_path / "d" / "processed" / "aptos" / "ben-512"
    assert paths.folds("aptos", 5, 42).parent == tmp_path / "d" / "processed" / "aptos"
    assert paths.fold_dir("exp", 3) == tmp_path / "o" / "models" / "exp" / "fold3"
    assert paths.submission("exp") == tmp_path / "o" / "submissions" / "exp.csv"
    assert all(isinstance(p, Path) for p in (paths.models, paths.reports, paths.submissions))
