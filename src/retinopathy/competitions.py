"""The two Kaggle competitions as data: file names, columns, layout, grades and how ids name patients, so one
pipeline serves both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import UserError
from .grades import GRADES

#: the formats a fundus photograph comes in, and the only ones ever decoded: PIL's other plugins (EPS runs
#: Ghostscript, for one) never see a user's file
PHOTO_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")


@dataclass(frozen=True)
class Competition:
    """How one competition's download is laid out once extracted."""

    slug: str
    aliases: tuple[str, ...]
    labels_csv: str
    id_column: str
    label_column: str
    train_images: str
    test_images: str
    image_suffix: str
    sample_submission: str
    test_csv: str | None
    #: EyePACS has both eyes of each patient; they must stay in one fold and can inform each other.
    paired_eyes: bool
    #: a code competition accepts only the output of a Kaggle kernel it runs offline (``retinopathy kernel``),
    #: never an uploaded CSV
    code_competition: bool = False

    #: the grades its labels use
    grades: tuple[int, ...] = GRADES

    def patient(self, image_id: str) -> str:
        """The patient an image belongs to (EyePACS ``10_left`` → ``10``); each APTOS image is its own group."""
        return image_id.rsplit("_", 1)[0] if self.paired_eyes else image_id

    def other_eye(self, image_id: str) -> str:
        """The id of the same patient's other eye (EyePACS ``10_left`` → ``10_right``); "" where there is none."""
        if not self.paired_eyes:
            return ""
        patient, _, side = str(image_id).rpartition("_")
        other = {"left": "right", "right": "left"}.get(side)
        return f"{patient}_{other}" if other else ""

    def image_path(self, raw_dir: Path, split: str, image_id: str) -> Path:
        """Where an image of the train or test split lies in a competition folder."""
        folder = self.train_images if split == "train" else self.test_images
        return Path(raw_dir) / folder / f"{image_id}{self.image_suffix}"


APTOS2019 = Competition(
    slug="aptos2019-blindness-detection",
    aliases=("aptos2019", "aptos"),
    labels_csv="train.csv",
    id_column="id_code",
    label_column="diagnosis",
    train_images="train_images",
    test_images="test_images",
    image_suffix=".png",
    sample_submission="sample_submission.csv",
    test_csv="test.csv",
    paired_eyes=False,
    code_competition=True,
)

EYEPACS2015 = Competition(
    slug="diabetic-retinopathy-detection",
    aliases=("eyepacs2015", "eyepacs"),
    labels_csv="trainLabels.csv",
    id_column="image",
    label_column="level",
    train_images="train",
    test_images="test",
    image_suffix=".jpeg",
    sample_submission="sampleSubmission.csv",
    test_csv=None,
    paired_eyes=True,
)

COMPETITIONS = (APTOS2019, EYEPACS2015)


def get_competition(name: str) -> Competition:
    """A competition by its Kaggle slug or a short alias (``aptos2019``, ``eyepacs2015``)."""
    for competition in COMPETITIONS:
        if name == competition.slug or name.lower() in competition.aliases:
            return competition
    known = ", ".join(f"{c.slug} ({'/'.join(c.aliases)})" for c in COMPETITIONS)
    raise UserError(f"unknown competition '{name}': use one of {known}")


def detect_competition(raw_dir: Path) -> Competition:
    """Which competition a folder in Kaggle layout holds, from its label file."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}: no such folder; download a competition there (retinopathy download) "
                        "or point --raw-dir at a folder in Kaggle layout")
    for competition in COMPETITIONS:
        if (raw_dir / competition.labels_csv).is_file():
            return competition
    expected = " or ".join(c.labels_csv for c in COMPETITIONS)
    raise UserError(f"{raw_dir}: no {expected} found; is this a competition folder in Kaggle layout?")


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(columns)}, "
                        f"found {','.join(df.columns)}")
    return df


def read_labels(raw_dir: Path, competition: Competition) -> pd.DataFrame:
    """The training labels as columns ``id`` and ``grade`` (int 0–4), each row checked."""
    path = Path(raw_dir) / competition.labels_csv
    df = _read_csv(path, [competition.id_column, competition.label_column])
    grades = pd.to_numeric(df[competition.label_column], errors="coerce")
    bad = ~grades.isin(GRADES)
    if bad.any():
        row = int(bad.idxmax())
        raise UserError(f"{path}, row {row + 2}: grade '{df[competition.label_column][row]}' is not an integer "
                        "0-4; fix or remove that row")
    empty = df[competition.id_column].str.strip() == ""
    if empty.any():
        raise UserError(f"{path}, row {int(empty.idxmax()) + 2}: empty {competition.id_column}; fix or remove that row")
    dup = df[competition.id_column].duplicated()
    if dup.any():
        row = int(dup.idxmax())
        raise UserError(f"{path}, row {row + 2}: duplicate id '{df[competition.id_column][row]}'; "
                        "keep one row per image")
    check_ids(df[competition.id_column], path, competition.id_column)
    return pd.DataFrame({"id": df[competition.id_column], "grade": grades.astype(int)})


def id_problem(image_id: str) -> str:
    """Why an image id cannot name a file ('' when it can): ids become file names under the raw and processed
    folders, so one holding a path (``/``, ``\\``, ``..``, an absolute path) would read or write outside them."""
    if image_id in (".", "..") or any(c in image_id for c in "/\\\0"):
        return "holds a path (/, \\ or ..), not a plain image name"
    return ""


def check_ids(ids: pd.Series, path: Path, column: str) -> None:
    """Refuse, in one line naming the row, an id that is a path rather than an image's name."""
    problems = ids.astype(str).map(id_problem)
    if (problems != "").any():
        row = int((problems != "").to_numpy().argmax())
        raise UserError(f"{path}, row {row + 2}: {column} '{str(ids.iloc[row])[:80]}' {problems.iloc[row]}; fix or "
                        "remove that row")


def read_test_ids(raw_dir: Path, competition: Competition) -> list[str] | None:
    """The test ids in the sample submission's order, or None where the folder has no test set."""
    path = Path(raw_dir) / competition.sample_submission
    if not path.is_file():
        return None
    ids = _read_csv(path, [competition.id_column, competition.label_column])[competition.id_column]
    check_ids(ids, path, competition.id_column)
    dup = ids.duplicated()
    if dup.any():
        row = int(dup.to_numpy().argmax())
        raise UserError(f"{path}, row {row + 2}: duplicate id '{ids.iloc[row]}'; keep one row per image")
    return ids.tolist()
