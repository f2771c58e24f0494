"""Copies of one photograph: found from the pixels (exact, rescaled, recompressed, slightly cropped), a different
photograph of the same eye kept apart, every copy in one fold on both competitions, the policies for copies whose
grades differ, and what verify writes."""

import io

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinopathy.data.duplicates import apply_policy, copy_groups, duplicates_table, summary
from retinopathy.preprocessing.image_io import decode_image, examine_image

from conftest import debug_config, shared


def copy_of(rgb: np.ndarray, scale: float = 1.4, crop: float = 0.02, quality: int = 85) -> np.ndarray:
    """What a copy of a photograph went through: a few per cent cropped off each side, rescaled, recompressed."""
    h, w = rgb.shape[:2]
    dy, dx = int(crop * h), int(crop * w)
    cut = rgb[dy:h - dy, dx:w - dx]
    resized = cv2.resize(cut, (round(cut.shape[1] * scale), round(cut.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(resized).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def another_photograph_of(rgb: np.ndarray) -> np.ndarray:
    """The same eye photographed again: the camera turned and aimed a little differently."""
    h, w = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((w * 0.45, h * 0.55), 12, 1.0)
    turn[:, 2] += (0.06 * w, -0.04 * h)
    return cv2.warpAffine(rgb, turn, (w, h))


def hashes(images) -> pd.Series:
    return pd.Series([examine_image(img, "crop", 32).phash for img in images])


def test_real_copies_are_found_and_another_photograph_of_the_eye_is_not_merged():
    folder = shared("aptos2019-224") / "train_images"
    photos = [decode_image(p)[0] for p in sorted(folder.glob("*.png"))[:12]]
    copies = [copy_of(p, scale, crop, quality) for p, (scale, crop, quality)
              in zip(photos, [(1.0, 0.0, 95), (0.6, 0.0, 90), (1.4, 0.02, 85), (2.0, 0.01, 80)] * 3, strict=False)]
    others = [another_photograph_of(p) for p in photos]
    groups = copy_groups(hashes(photos + copies + others))
    n = len(photos)
    assert all(groups[i] == groups[n + i] for i in range(n)), "every copy is grouped with its original"
    assert len(set(groups[:n])) == n, "twelve different photographs stay twelve groups"
    assert all(groups[2 * n + i] not in (groups[i], groups[n + i]) for i in range(n)), \
        "another photograph of the same eye (turned, shifted) is not a copy"
    flipped = hashes([p[:, ::-1] for p in photos[:3]])
    assert not set(copy_groups(pd.concat([hashes(photos[:3]), flipped]))[3:]) & set(range(3)), \
        "a mirrored photograph (the other eye's orientation) is not a copy"


def test_the_duplicates_table_names_each_group_its_grades_and_distances():
    images = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "split": ["train", "train", "test", "train", "train"],
                           "phash": ["00" * 32, "00" * 31 + "01", "00" * 31 + "03", "ff" * 32, "f0" * 32],
                           "grade": [0, 4, None, 2, 2]})
    table = duplicates_table(images)
    assert table["image_id"].tolist() == ["a", "b", "c"] and table["group"].tolist() == [0, 0, 0]
    assert table["distance"].tolist() == [0, 1, 2], "bits from the group's first member"
    assert summary(table) == "1 groups of copies (3 images), 1 with different grades, 1 across train and test"


def test_each_policy_for_copies_whose_grades_differ():
    labels = pd.DataFrame({"id": list("abcdefg"), "grade": [0, 4, 4, 2, 2, 1, 3]})
    groups = np.array([0, 0, 0, 1, 1, 2, 3])  # a: 0 against two 4s; d, e agree; f, g alone
    keep = apply_policy(labels, groups, "keep", numeric=False)
    assert keep["id"].tolist() == list("abcdefg") and keep["group"].tolist() == groups.tolist()
    assert apply_policy(labels, groups, "drop", numeric=False)["id"].tolist() == list("defg")
    majority = apply_policy(labels, groups, "merge", numeric=False)
    assert majority["id"].tolist() == list("adfg") and majority["grade"].tolist() == [4, 2, 1, 3]
    mean = apply_policy(labels, groups, "merge", numeric=True)
    assert mean["grade"].tolist() == [3, 2, 1, 3], "the rounded mean of 0, 4, 4 is 3"
    tie = apply_policy(pd.DataFrame({"id": ["x", "y"], "grade": [3, 1]}), np.array([0, 0]), "merge", numeric=False)
    assert tie["grade"].tolist() == [1], "a tie goes to the lower grade"


def add_copies(raw, competition, pairs: dict[str, tuple[str, int]], where):
    """A competition folder of links to ``raw`` plus, for each new id, a copy of an existing training image graded
    as given; the labels file is a new one (the original is left alone)."""
    from retinopathy.competitions import get_competition

    comp = get_competition(competition)
    folder = where / f"{raw.name}-with-copies"
    folder.mkdir()
    for item in raw.iterdir():
        if item.name not in (comp.train_images, comp.labels_csv):
            (folder / item.name).symlink_to(item)
    (folder / comp.train_images).mkdir()
    for image in (raw / comp.train_images).iterdir():
        (folder / comp.train_images / image.name).symlink_to(image)
    labels = pd.read_csv(raw / comp.labels_csv, dtype=str)
    for new, (source, grade) in pairs.items():
        rgb = decode_image(comp.image_path(raw, "train", source))[0]
        ok = cv2.imwrite(str(comp.image_path(folder, "train", new)), cv2.cvtColor(copy_of(rgb), cv2.COLOR_RGB2BGR))
        assert ok
        labels.loc[len(labels)] = {comp.id_column: new, comp.label_column: str(grade)}
    labels.to_csv(folder / comp.labels_csv, index=False)
    return folder


@pytest.mark.parametrize("competition", ["aptos2019", "eyepacs2015"])
def test_every_copy_of_a_photograph_lands_in_one_fold(competition, tiny_aptos, tiny_eyepacs, tmp_path):
    from retinopathy.competitions import get_competition
    from retinopathy.data.folds import make_folds
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.preprocessing.stage import preprocess

    raw = tiny_aptos if competition == "aptos2019" else tiny_eyepacs
    comp = get_competition(competition)
    ids = pd.read_csv(raw / comp.labels_csv, dtype=str)[comp.id_column].tolist()
    new = (lambda k: f"copy{k}") if competition == "aptos2019" else (lambda k: f"{900 + k}_left")
    pairs = {new(k): (ids[k], 4 - k % 5) for k in range(6)}
    folder = add_copies(raw, competition, pairs, tmp_path)
    paths = Paths(data=tmp_path / "data", output=tmp_path)
    experiment = Experiment(debug_config(folder, "copies", f"competition={competition}", "n_folds=3",
                                         "conflicting_grades=keep"), paths)
    preprocess(experiment)
    folds = make_folds(experiment, verbose=False).set_index("id")
    for copy, (original, _) in pairs.items():
        assert folds.loc[copy, "fold"] == folds.loc[original, "fold"], f"{copy} and {original}: one fold"
        if competition == "eyepacs2015":  # the copy's patient and its original's patient are joined too
            twin = comp.other_eye(original)
            if twin in folds.index:
                assert folds.loc[twin, "fold"] == folds.loc[copy, "fold"]
    table = pd.read_csv(paths.duplicates(experiment.config.dataset_name), dtype={"image_id": str})
    assert table.groupby("group")["image_id"].apply(set).map(len).eq(2).all()
    assert {frozenset(s) for s in table.groupby("group")["image_id"].apply(set)} == \
        {frozenset({c, o}) for c, (o, _) in pairs.items()}, "the groups are the copies made, no more"

    dropped = Experiment(debug_config(folder, "copies", f"competition={competition}", "n_folds=3",
                                      "conflicting_grades=drop"), paths)
    assert dropped.folds_csv != experiment.folds_csv, "each policy has folds of its own"
    kept = make_folds(dropped, verbose=False)
    grades = pd.read_csv(folder / comp.labels_csv, dtype=str).set_index(comp.id_column)[comp.label_column]
    differ = {c for c, (o, _) in pairs.items() if grades[c] != grades[o]}
    assert differ and not differ & set(kept["id"]), "groups whose grades differ are left out"
    assert len(kept) == len(folds) - 2 * len(differ)


def test_verify_writes_the_duplicates_their_contact_sheet_and_the_ungradable(tiny_aptos, tmp_path, capsys):
    from retinopathy.commands import verify

    first = pd.read_csv(tiny_aptos / "train.csv", dtype=str)["id_code"][0]
    folder = add_copies(tiny_aptos, "aptos2019", {"copy-a": (first, 3)}, tmp_path)
    blank = folder / "train_images" / "blank.png"
    cv2.imwrite(str(blank), np.zeros((200, 200, 3), np.uint8))
    labels = pd.read_csv(folder / "train.csv", dtype=str)
    labels.loc[len(labels)] = {"id_code": "blank", "diagnosis": "0"}
    labels.to_csv(folder / "train.csv", index=False)
    # the blank image decodes and is labelled, so the folder is clean; that it cannot be graded is reported
    verify.main(["--raw-dir", str(folder), "--data-dir", str(tmp_path / "data"), "--dry-run", "--workers", "1"])
    printed = capsys.readouterr().out
    cleaning = tmp_path / "data" / "cleaning"
    line = next(line for line in printed.splitlines() if "duplicates:" in line)
    assert "1 groups of copies (2 images)" in line and "1 with different grades" in line
    table = pd.read_csv(cleaning / f"{folder.name}-duplicates.csv", dtype={"image_id": str})
    assert list(table.columns) == ["group", "image_id", "split", "grade", "distance"] and len(table) == 2
    sheet = Image.open(cleaning / f"{folder.name}-duplicates.png")
    assert sheet.width >= 2 * 128 and sheet.height >= 128, "one row: the group's two copies side by side"
    assert "1 of 52 photographs not gradable (no eye found" in printed
    ungradable = pd.read_csv(cleaning / f"{folder.name}-ungradable.csv")
    assert ungradable["id"].tolist() == ["blank"]


def test_verify_finds_copies_across_the_two_competitions_under_one_data_root(tiny_aptos, tiny_eyepacs, tmp_path,
                                                                             capsys):
    from retinopathy.commands import verify
    from retinopathy.competitions import APTOS2019, EYEPACS2015

    raw = tmp_path / "data" / "raw"
    (raw / APTOS2019.slug).mkdir(parents=True)
    for item in tiny_aptos.iterdir():
        (raw / APTOS2019.slug / item.name).symlink_to(item)
    eyepacs = add_copies(tiny_eyepacs, "eyepacs2015", {}, tmp_path)
    first = pd.read_csv(tiny_aptos / "train.csv", dtype=str)["id_code"][0]
    rgb = decode_image(tiny_aptos / "train_images" / f"{first}.png")[0]  # an APTOS photograph in EyePACS too
    assert cv2.imwrite(str(eyepacs / "train" / "999_left.jpeg"), cv2.cvtColor(copy_of(rgb), cv2.COLOR_RGB2BGR))
    labels = pd.read_csv(eyepacs / "trainLabels.csv", dtype=str)
    labels.loc[len(labels)] = {"image": "999_left", "level": "2"}
    labels.to_csv(eyepacs / "trainLabels.csv", index=False)
    eyepacs.rename(raw / EYEPACS2015.slug)
    verify.main(["--competition", "aptos2019", "--data-dir", str(tmp_path / "data"), "--dry-run", "--workers", "1"])
    line = next(line for line in capsys.readouterr().out.splitlines() if "duplicates:" in line)
    assert "1 groups of copies (2 images)" in line and "1 across competitions" in line, line
    table = pd.read_csv(tmp_path / "data" / "cleaning" / f"{APTOS2019.slug}-duplicates.csv", dtype=str)
    pairs = set(zip(table["dataset"], table["image_id"], strict=False))
    assert pairs == {(APTOS2019.slug, first), (EYEPACS2015.slug, "999_left")}


def test_exclude_ungradable_leaves_them_out_of_the_folds(tiny_aptos, tmp_path):
    from retinopathy.data.folds import make_folds
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.preprocessing.stage import preprocess

    folder = add_copies(tiny_aptos, "aptos2019", {}, tmp_path)
    assert cv2.imwrite(str(folder / "train_images" / "blank.png"), np.zeros((200, 200, 3), np.uint8))
    labels = pd.read_csv(folder / "train.csv", dtype=str)
    labels.loc[len(labels)] = {"id_code": "blank", "diagnosis": "0"}
    labels.to_csv(folder / "train.csv", index=False)
    paths = Paths(data=tmp_path / "data", output=tmp_path)
    everything = Experiment(debug_config(folder, "all"), paths)
    preprocess(everything)
    assert "blank" in set(make_folds(everything, verbose=False)["id"]), "kept unless asked"
    gradable = Experiment(debug_config(folder, "gradable", "exclude_ungradable=true"), paths)
    folds = make_folds(gradable, verbose=False)
    assert "blank" not in set(folds["id"]) and len(folds) == len(labels) - 1
    assert gradable.folds_csv != everything.folds_csv
