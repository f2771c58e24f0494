"""Verify a competition folder: decode every image in full, cross-check the labels against the images, and record
the bad images in a quarantine CSV outside the raw folder saying why. Raw data is never modified: nothing is moved
or deleted, and the labels file is never edited (preprocessing records a bad image as unreadable by itself).

A header check (PIL's ``verify()``) misses a JPEG cut short in transfer, so each image is decoded completely, with
truncated data treated as an error rather than padded with grey.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..competitions import PHOTO_FORMATS, Competition, detect_competition
from ..files import process_pool, write_csv
from ..metrics import GRADES
from ..progress import progress_bar

IMAGE_SUFFIXES = {".png", ".jpeg", ".jpg", ".tif", ".tiff", ".bmp"}


def check_image(path: str) -> str:
    """'' for an image that decodes completely, else the reason it does not."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with Image.open(path, formats=PHOTO_FORMATS) as im:
            im.load()  # the whole image: a truncated JPEG or PNG raises here
            if im.width < 8 or im.height < 8:
                return f"too small ({im.width}x{im.height})"
    except Image.DecompressionBombError as e:
        return f"too large to decode safely ({e})"
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad image, which is what we report
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot identify image file" in message:
            return "not an image (unrecognised format)"
        return f"cannot decode: {message}"
    return ""


@dataclass
class VerifyReport:
    """What verification found: bad images (recorded in the quarantine CSV) and mismatches between labels and
    images."""
    checked: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # path relative to the folder → reason
    labels_without_image: list[str] = field(default_factory=list)
    images_without_label: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    bad_grades: list[tuple[int, str]] = field(default_factory=list)  # (CSV row, value)
    #: where the bad images were recorded ('' on a dry run)
    record: str = ""

    @property
    def clean(self) -> bool:
        """Whether nothing at all was wrong."""
        return not (self.bad or self.labels_without_image or self.images_without_label or self.duplicate_ids
                    or self.bad_grades)

    def lines(self) -> list[str]:
        """The findings as lines for the terminal."""
        def sample(items):
            return f" (e.g. {', '.join(map(str, items[:3]))})" if items else ""
        return [
            f"images: {self.checked} decoded, {len(self.bad)} bad{sample(sorted(self.bad))}" + (
                (f", recorded in {self.record} (the files stay where they are)" if self.record else
                 ", left in place (dry run: nothing recorded)") if self.bad else ""),
            f"labels without an image: {len(self.labels_without_image)}{sample(self.labels_without_image)}",
            f"training images without a label: {len(self.images_without_label)}{sample(self.images_without_label)}",
            f"duplicate ids in the labels: {len(self.duplicate_ids)}{sample(self.duplicate_ids)}",
            f"grades outside 0-4: {len(self.bad_grades)}"
            + sample([f"row {r}: '{v}'" for r, v in self.bad_grades]),
        ]


def image_files(raw_dir: Path, competition: Competition) -> list[Path]:
    """Every file in the training and test image folders (whatever its suffix: a stray file is reported too)."""
    files = []
    for folder in (competition.train_images, competition.test_images):
        d = raw_dir / folder
        if d.is_dir():
            files += sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    return files


def quarantine(record: Path, bad: dict[str, str]) -> Path:
    """Write the bad files (paths relative to their competition folder) and why to the quarantine CSV ``record``,
    outside the raw folder; the files themselves stay where they are."""
    rows = pd.DataFrame({"file": list(bad), "reason": list(bad.values())})
    return write_csv(rows, record)


def verify_dataset(raw_dir: Path, competition: Competition | None = None, workers: int | None = None,
                   progress: bool = True, record: Path | None = None) -> VerifyReport:
    """Decode every image (in parallel), record the bad ones in the quarantine CSV ``record`` (None: a dry run),
    and cross-check the label CSV against the images."""
    raw_dir = Path(raw_dir)
    competition = competition or detect_competition(raw_dir)
    report = VerifyReport(record=str(record or ""))
    files = image_files(raw_dir, competition)
    workers = workers or os.cpu_count() or 1
    paths = [str(p) for p in files]
    if workers > 1 and len(paths) > 50:
        with process_pool(workers) as pool:
            reasons = list(progress_bar(pool.map(check_image, paths, chunksize=32), total=len(paths), desc="verify",
                                unit="img", show=progress))
    else:
        reasons = [check_image(p) for p in progress_bar(paths, desc="verify", unit="img", show=progress)]
    report.checked = len(paths)
    for path, reason in zip(files, reasons, strict=False):
        if path.suffix.lower() not in IMAGE_SUFFIXES and not reason:
            reason = f"unexpected file type '{path.suffix}'"
        if reason:
            report.bad[str(path.relative_to(raw_dir))] = reason
    if record is not None:  # written every pass, so a mended file leaves the record
        quarantine(record, report.bad)

    labels_path = raw_dir / competition.labels_csv
    if labels_path.is_file():
        labels = pd.read_csv(labels_path, dtype=str, keep_default_na=False)
        if {competition.id_column, competition.label_column} <= set(labels.columns):
            ids = labels[competition.id_column].str.strip()
            report.duplicate_ids = ids[ids.duplicated()].unique().tolist()
            grades = pd.to_numeric(labels[competition.label_column], errors="coerce")
            bad_rows = ~grades.isin(GRADES)
            report.bad_grades = [(int(i) + 2, labels[competition.label_column][i]) for i in labels.index[bad_rows]]
            train_dir = raw_dir / competition.train_images
            present = {p.stem for p in files if p.parent == train_dir and str(p.relative_to(raw_dir)) not in report.bad}
            report.labels_without_image = [i for i in ids.unique() if i not in present]
            labelled = set(ids)
            report.images_without_label = sorted(s for s in present if s not in labelled)
    return report
