"""Decode every image of a competition folder in full (a truncated JPEG is caught), cross-check the label CSV
against the images, and record bad images in data/cleaning/<dataset>-quarantine.csv saying why (the raw folder is
never modified: nothing is moved or deleted). Then examine every photograph for copies of one another (perceptual
hashes; across competitions too when
both are under data/raw/) and for whether it can be graded, and write what was found under data/cleaning/:
<dataset>-duplicates.csv (and .png, a contact sheet of the groups), <dataset>-ungradable.csv. Exit status 1 when
the decoding or the labels found anything, so it can gate a script.

  retinopathy verify --competition aptos2019
  retinopathy verify --config debug --dry-run              # report only, record nothing
"""

import sys

import pandas as pd

from .. import cli
from ..competitions import COMPETITIONS, detect_competition, read_labels
from ..data.duplicates import duplicates_table, summary
from ..data.folds import gradable_mask
from ..data.verify import verify_dataset
from ..files import atomic_path, write_csv


def photographs(raw_dir, competition, cache, workers):
    """The examined photographs of one competition folder, with their grades (empty for test images)."""
    from ..preprocessing.survey import survey_dataset

    table = survey_dataset(raw_dir, competition, cache, workers=workers)
    grades = read_labels(raw_dir, competition).drop_duplicates("id").set_index("id")["grade"]
    return table.assign(grade=table["id"].map(grades).where(table["split"] == "train").astype("Int64"))


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    cli.add_workers(p)
    p.add_argument("--dry-run", action="store_true", help="report bad images without recording them")
    args = p.parse_args(argv)
    experiment = cli.experiment(args)
    raw_dir, paths, dataset = experiment.raw_dir, experiment.paths, experiment.config.dataset_name
    record = None if args.dry_run else paths.quarantine(dataset)
    report = verify_dataset(raw_dir, None, workers=args.workers, record=record)
    for line in report.lines():
        print(f"verify: {line}")

    if report.bad_grades or report.duplicate_ids:  # the labels cannot be read as grades yet
        print("verify: copies and gradability are examined once the labels are fixed (see above)")
        print(f"{raw_dir}: problems found (see above)")
        sys.exit(1)
    from ..preprocessing.image_io import encode_png
    from ..preprocessing.stage import ungradable_line
    from ..preprocessing.survey import groups_sheet

    cleaning = paths.data / "cleaning"
    competition = detect_competition(raw_dir)
    mine = photographs(raw_dir, competition, cleaning / f"{dataset}-photographs.csv", args.workers)
    print(f"verify: {ungradable_line(mine)}")
    ungradable = mine[~gradable_mask(mine)]
    ungradable_csv = cleaning / f"{dataset}-ungradable.csv"
    if not ungradable.empty:
        write_csv(ungradable[["id", "split", "grade", "ungradable_reason", "brightness", "contrast", "focus"]],
                  ungradable_csv)
        print(f"verify: the ungradable photographs → {ungradable_csv}")
    stacked = [mine.assign(dataset=dataset)]
    for other in COMPETITIONS:  # the other competition, where it is under the same data root: copies across them
        folder = paths.raw(other.slug)
        if other.slug != competition.slug and (folder / other.labels_csv).is_file():
            print(f"verify: also examining {folder} for copies across the competitions")
            stacked.append(photographs(folder, other, cleaning / f"{other.slug}-photographs.csv", args.workers)
                           .assign(dataset=other.slug))
    images = pd.concat(stacked, ignore_index=True)
    table = duplicates_table(images)
    if len(stacked) > 1:  # the groups this dataset is part of
        table = table[table.groupby("group")["dataset"].transform(lambda d: (d == dataset).any())]
        table["group"] = pd.factorize(table["group"])[0]
    else:
        table = table.drop(columns="dataset")
    csv = write_csv(table, paths.duplicates(dataset))
    files = dict(zip(images["id"], images["file"], strict=False))
    sheet = csv.with_suffix(".png")
    with atomic_path(sheet) as tmp:
        tmp.write_bytes(encode_png(groups_sheet(table, files)))
    print(f"verify: duplicates: {summary(table)} → {csv} (contact sheet: {sheet})")
    print(f"{raw_dir}: {'clean' if report.clean else 'problems found (see above)'}")
    if not report.clean:
        sys.exit(1)
