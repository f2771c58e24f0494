"""The image verifier: real folders pass clean, every kind of bad file is caught and quarantined, labels checked."""

import shutil

import pandas as pd

from retinopathy.data.verify import check_image

from conftest import run_script, shared


def test_real_folders_are_clean(tmp_path):
    """The ten EyePACS photographs and every 30th shared APTOS one (the whole set: benchmarks/duplicates.py)."""
    import pandas as pd

    aptos = shared("aptos2019-224")
    sample = tmp_path / "aptos-sample"
    (sample / "train_images").mkdir(parents=True)
    labels = pd.read_csv(aptos / "train.csv", dtype=str).iloc[::30]
    labels.to_csv(sample / "train.csv", index=False)
    for i in labels["id_code"]:
        (sample / "train_images" / f"{i}.png").symlink_to(aptos / "train_images" / f"{i}.png")
    for folder, n in ((shared("eyepacs-sample"), 10), (sample, len(labels))):
        done = run_script("verify.py", "--raw-dir", str(folder), "--dry-run", "--data-dir", str(tmp_path / "data"),
                          cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.strip().endswith("clean"), done.stdout + done.stderr
        assert f"verify: all {n} photographs gradable" in done.stdout, done.stdout


def test_truncated_real_jpeg_is_caught(tmp_path):
    real = sorted((shared("eyepacs-sample") / "train").glob("*.jpeg"))[0]
    assert check_image(str(real)) == ""
    truncated = tmp_path / real.name
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size * 2 // 3])
    assert "cannot decode" in check_image(str(truncated))
    text = tmp_path / "notes.jpeg"
    text.write_text("not a photograph")
    assert check_image(str(text)) == "not an image (unrecognised format)"


def test_bad_files_quarantined_and_labels_cross_checked(tiny_eyepacs, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_eyepacs, raw)
    images = sorted((raw / "train").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:300])
    (raw / "train" / "stray.txt").write_text("hello")
    (raw / "train" / "999_left.jpeg").write_bytes(images[1].read_bytes())  # an image with no label
    labels = (raw / "trainLabels.csv").read_text().splitlines()
    (raw / "trainLabels.csv").write_text("\n".join(labels + [labels[1], "1234_left,7"]) + "\n")
    before = (raw / "trainLabels.csv").read_bytes()

    done = run_script("verify.py", "--raw-dir", str(raw), cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout
    assert "2 bad" in out and "duplicate ids in the labels: 1" in out and "grades outside 0-4: 1" in out
    assert "training images without a label: 1 (e.g. 999_left)" in out
    assert "labels without an image: 2" in out  # the truncated image's label and 1234_left
    record = pd.read_csv(tmp_path / "data" / "cleaning" / "raw-quarantine.csv")
    assert set(record["file"]) == {f"train/{images[0].name}", "train/stray.txt"}
    assert images[0].is_file() and (raw / "train" / "stray.txt").is_file(), "raw data is never moved"
    assert not (raw / "quarantine").exists()
    assert (raw / "trainLabels.csv").read_bytes() == before, "the labels file is never edited"
