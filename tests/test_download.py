"""scripts/download.py with the real kaggle client against a fake Kaggle server on 127.0.0.1."""

import io
import shutil
import zipfile
from pathlib import Path

import pytest

from conftest import run_script
from fake_kaggle import FakeCompetition, FakeKaggle

APTOS = "aptos2019-blindness-detection"
EYEPACS = "diabetic-retinopathy-detection"


def zip_folder(folder: Path, names=None, prefix="") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and (names is None or rel.split("/")[0] in names):
                z.write(p, prefix + rel)
    return buf.getvalue()


def zip_bytes(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def server():
    fake = FakeKaggle().start()
    yield fake
    fake.stop()


def download(server, tmp_path, *args, key=None, env=None):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full_env = {**server.client_env(home, key), **(env or {})}
    return run_script("download.py", "--data-dir", str(tmp_path / "data"), *args, cwd=tmp_path, env=full_env)


def test_whole_competition_download_unpack_verify_then_no_network(server, tiny_aptos, tmp_path):
    server.competitions[APTOS] = FakeCompetition(files={}, bundle=zip_folder(tiny_aptos, names={
        "train.csv", "test.csv", "sample_submission.csv", "train_images", "test_images"}))
    done = download(server, tmp_path, "--competition", "aptos2019")
    assert done.returncode == 0, done.stderr
    raw = tmp_path / "data" / "raw" / APTOS
    source = sorted(p.relative_to(tiny_aptos) for p in (tiny_aptos / "train_images").iterdir())
    assert sorted(p.relative_to(raw) for p in (raw / "train_images").iterdir()) == source
    assert (raw / "train.csv").read_bytes() == (tiny_aptos / "train.csv").read_bytes()
    assert "verify: images: 50 decoded, 0 bad" in done.stdout
    assert any("DownloadDataFiles" in line for line in server.log)

    requests_before = len(server.log)
    again = download(server, tmp_path, "--competition", APTOS)
    assert again.returncode == 0 and "nothing to fetch" in again.stdout
    assert len(server.log) == requests_before, "a complete folder costs no network"


def test_selected_files_and_split_archives(server, tiny_eyepacs, tmp_path):
    train_zip = zip_folder(tiny_eyepacs, names={"train"})
    third = len(train_zip) // 3 + 1
    parts = {f"train.zip.00{i + 1}": train_zip[i * third:(i + 1) * third] for i in range(3)}
    labels = zip_bytes("trainLabels.csv", (tiny_eyepacs / "trainLabels.csv").read_bytes())
    files = {**parts, "trainLabels.csv.zip": labels, "test.zip.001": b"not wanted"}
    server.competitions[EYEPACS] = FakeCompetition(files=files)
    done = download(server, tmp_path, "--competition", "eyepacs2015", "--files", "trainLabels.csv.zip", *parts)
    assert done.returncode == 0, done.stderr
    raw = tmp_path / "data" / "raw" / EYEPACS
    assert (raw / "trainLabels.csv").read_bytes() == (tiny_eyepacs / "trainLabels.csv").read_bytes()
    expected = sorted(p.name for p in (tiny_eyepacs / "train").iterdir())
    assert sorted(p.name for p in (raw / "train").iterdir()) == expected
    for name in expected[:3]:
        assert (raw / "train" / name).read_bytes() == (tiny_eyepacs / "train" / name).read_bytes()
    assert not any("test.zip.001" in line for line in server.log), "only the files asked for are fetched"
    assert not list((raw / ".downloads").glob("train.zip.00*")), "parts are removed once joined and checked"


def test_a_cut_off_transfer_is_resumed(server, tiny_aptos, tmp_path):
    bundle = zip_folder(tiny_aptos, names={"train.csv", "train_images"})
    server.competitions[APTOS] = FakeCompetition(files={}, bundle=bundle)
    server.cut_off.add(f"{APTOS}.zip")
    first = download(server, tmp_path, "--competition", APTOS)
    if first.returncode != 0:  # the client gave up: our rerun must finish the job
        assert "error:" in first.stderr and "Traceback" not in first.stderr
        first = download(server, tmp_path, "--competition", APTOS)
    assert first.returncode == 0, first.stderr
    raw = tmp_path / "data" / "raw" / APTOS
    assert (raw / ".downloads" / f"{APTOS}.zip").read_bytes() == bundle
    assert len(list((raw / "train_images").iterdir())) == 40
    assert sum("GET" in line for line in server.log) >= 2, "the cut-off file was asked for again"


def test_corrupt_archive_is_refused_and_removed(server, tmp_path):
    good = zip_bytes("train.csv", b"id_code,diagnosis\na,0\n")
    server.competitions[APTOS] = FakeCompetition(files={}, bundle=good[:-30] + b"\0" * 30)
    done = download(server, tmp_path, "--competition", APTOS)
    assert done.returncode == 2
    assert "incomplete or corrupt" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "raw" / APTOS / ".downloads" / f"{APTOS}.zip").exists()


def test_bad_images_in_a_download_are_quarantined(server, tiny_aptos, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_aptos, source)
    images = sorted((source / "train_images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:200])  # truncated PNG
    images[1].write_bytes(b"")  # zero bytes
    server.competitions[APTOS] = FakeCompetition(files={}, bundle=zip_folder(source))
    done = download(server, tmp_path, "--competition", APTOS)
    assert done.returncode == 0, done.stderr
    raw = tmp_path / "data" / "raw" / APTOS
    report = (tmp_path / "data" / "cleaning" / f"{APTOS}-quarantine.csv").read_text()
    assert {f"train_images/{images[0].name}", f"train_images/{images[1].name}"} <= set(report.split())  \
        or (images[0].name in report and images[1].name in report)
    assert not (raw / "quarantine").exists() and (raw / "train_images" / images[0].name).is_file()
    assert "2 bad" in done.stdout and "labels without an image: 2" in done.stdout
    assert "empty file" in report and "cannot decode" in report


@pytest.mark.parametrize("case, expected", [
    ("bad key", "401"),
    ("rules", "https://www.kaggle.com/competitions/aptos2019-blindness-detection/rules"),
    ("unknown file", "404"),
    ("server down", "cannot reach Kaggle"),
    ("no credentials", "no Kaggle credentials"),
])
def test_failures_are_one_clear_line(server, tmp_path, case, expected):
    server.competitions[APTOS] = FakeCompetition(files={"train.csv": b"id_code,diagnosis\n"},
                                                 rules_accepted=case != "rules")
    args = ["--competition", APTOS] + (["--files", "nope.csv"] if case == "unknown file" else [])
    env = {}
    if case == "server down":
        env = {"HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    if case == "no credentials":
        env = {"KAGGLE_USERNAME": None, "KAGGLE_KEY": None, "KAGGLE_API_TOKEN": None}
    done = download(server, tmp_path, *args, key="wrong" if case == "bad key" else None, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], done.stderr
