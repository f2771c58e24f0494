"""scripts/submit.py: validation before anything is sent, then a round trip through the real kaggle client to a
fake Kaggle server (upload, create, poll until scored). EyePACS takes CSVs; APTOS, a code competition, does not."""

import pandas as pd
import pytest

from conftest import run_script
from fake_kaggle import FakeCompetition, FakeKaggle

EYEPACS = "diabetic-retinopathy-detection"


@pytest.fixture
def server():
    fake = FakeKaggle(pending_polls=1).start()
    fake.competitions[EYEPACS] = FakeCompetition(files={})
    yield fake
    fake.stop()


def submit(server, tmp_path, raw, csv, *extra):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return run_script("submit.py", str(csv), "-m", "tiny test", "--raw-dir", str(raw), "--poll", "0.1", *extra,
                      cwd=tmp_path, env=server.client_env(home))


def good_submission(raw, path):
    sample = pd.read_csv(raw / "sampleSubmission.csv", dtype={"image": str})
    sample["level"] = [i % 5 for i in range(len(sample))]
    sample.to_csv(path, index=False)
    return sample


def test_submit_round_trip(server, tiny_eyepacs, tmp_path):
    csv = tmp_path / "mine.csv"
    good_submission(tiny_eyepacs, csv)
    done = submit(server, tmp_path, tiny_eyepacs, csv)
    assert done.returncode == 0, done.stderr
    assert "public score: 0.812" in done.stdout
    assert server.submissions[0]["content"] == csv.read_bytes(), "the file arrived intact"
    assert server.submissions[0]["description"] == "tiny test"
    methods = [line.rsplit("/", 1)[-1] for line in server.log if line.startswith("POST")]
    assert methods[:2] == ["StartSubmissionUpload", "CreateSubmission"] and methods.count("ListSubmissions") >= 2


@pytest.mark.parametrize("bad, message", [
    (lambda s: s.rename(columns={"level": "grade"}), "expected image,level"),
    (lambda s: pd.concat([s, s.iloc[:1]]), "duplicate id"),
    (lambda s: s.iloc[1:], "missing"),
    (lambda s: pd.concat([s, pd.DataFrame({"image": ["zzz"], "level": [0]})]), "not in the sample submission"),
    (lambda s: s.iloc[::-1], "order"),
    (lambda s: s.assign(level=s["level"].astype(object).where(s.index != 2, 7)), "row 4: grade '7'"),
    (lambda s: s.assign(level=s["level"].astype(object).where(s.index != 0, 1.5)), "row 2: grade '1.5'"),
    # one float further down: pandas would read every grade as a float and blame the first row
    (lambda s: s.assign(level=s["level"].astype(object).where(s.index != 3, 2.5)), "row 5: grade '2.5'"),
    (lambda s: s.assign(level=s["level"].astype(object).where(s.index != 1, "")), "row 3: grade ''"),
    (lambda s: s.assign(level=s["level"].astype(float)), "row 2: grade '0.0'"),
])
def test_bad_files_are_refused_before_sending(server, tiny_eyepacs, tmp_path, bad, message):
    csv = tmp_path / "bad.csv"
    sample = good_submission(tiny_eyepacs, tmp_path / "good.csv")
    bad(sample).to_csv(csv, index=False)
    done = submit(server, tmp_path, tiny_eyepacs, csv)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not server.log, "nothing was sent"


def test_submit_failures(server, tiny_eyepacs, tmp_path):
    csv = tmp_path / "mine.csv"
    good_submission(tiny_eyepacs, csv)
    server.competitions[EYEPACS].rules_accepted = False
    done = submit(server, tmp_path, tiny_eyepacs, csv)
    assert done.returncode == 2 and "rules" in done.stderr and "Traceback" not in done.stderr
    missing = submit(server, tmp_path, tiny_eyepacs, tmp_path / "nope.csv")
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_a_code_competition_refuses_a_csv_naming_the_kernel_path(server, tiny_aptos, tmp_path):
    sample = pd.read_csv(tiny_aptos / "sample_submission.csv", dtype={"id_code": str})
    csv = tmp_path / "aptos.csv"
    sample.assign(diagnosis=0).to_csv(csv, index=False)
    done = submit(server, tmp_path, tiny_aptos, csv)
    assert done.returncode == 2 and "code competition" in done.stderr and "retinopathy kernel --dataset" in done.stderr
    assert done.stderr.count("\n") == 1 and not server.log, "nothing was sent"
