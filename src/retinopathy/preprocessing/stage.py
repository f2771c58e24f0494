"""The preprocessing stage: every training and test image of a competition prepared once per method and size, with
a manifest saying what became of each; resumable."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd

from ..competitions import detect_competition, read_labels, read_test_ids
from ..data.folds import gradable_mask
from ..data.manifest import COLUMNS, absolute_paths, read_manifest_file, relative_paths
from ..errors import UserError
from ..experiment import Experiment
from ..files import atomic_path, process_pool, remove_stale_temporaries, write_csv
from ..paths import MANIFEST
from ..progress import progress_bar
from .fundus import check_method
from .image_io import encode_png, examine_file


def source_stamp(source: str | os.PathLike) -> tuple[int, int] | None:
    """A raw photograph's size and modification time (None where it is missing): a file replaced in place since
    it was prepared is prepared again."""
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def resource_fault(error: BaseException) -> bool:
    """Whether a decoder's failure is the machine's (memory) rather than the image's."""
    return isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno == errno.ENOMEM) or \
        "Insufficient memory" in str(error)  # OpenCV's cv2.error when an allocation fails


def _process_one(job: tuple[str, str, str, str, str, int, bool, str]) -> dict:
    image_id, split, source, out_path, method, size, hashed, raw_dir = job
    stamp = source_stamp(source)
    row = {"id": image_id, "split": split, "source": os.path.relpath(source, raw_dir),
           "source_size": stamp[0] if stamp else None, "source_mtime": stamp[1] if stamp else None,
           "width": None, "height": None, "eye_x": None, "eye_y": None, "eye_radius": None, "status": "ok",
           "path": Path(out_path).name, "digest": "", "gradable": False, "ungradable_reason": "", "brightness": None,
           "contrast": None, "focus": None, "phash": ""}
    try:
        examined = examine_file(source, method, size, hashed)
    except FileNotFoundError:
        return {**row, "status": "missing", "path": "", "ungradable_reason": "file missing"}
    except Exception as e:  # any decoder failure is the image's fault: record it, carry on
        if resource_fault(e):  # ...but not the machine's: out of memory stops the stage, quarantining nothing
            raise UserError(f"preprocess: out of memory on {source} ({type(e).__name__}: {str(e)[:80]}): free "
                            "memory or use fewer workers (--workers 1); the images done so far are kept and a "
                            "rerun goes on from there".replace("\n", " ")) from None
        return {**row, "status": f"unreadable: {type(e).__name__}: {e}".replace("\n", " ")[:200], "path": "",
                "ungradable_reason": "cannot be decoded"}
    out, eye, (w, h) = examined.image, examined.eye, examined.original
    row.update(width=w, height=h, phash=examined.phash, **examined.quality.record())
    if eye is None:
        row["status"] = "no_eye" if method != "none" else "ok"
    else:
        row.update(eye_x=round(eye.cx, 1), eye_y=round(eye.cy, 1), eye_radius=round(eye.radius, 1))
    png = encode_png(out)
    row["digest"] = hashlib.sha256(png).hexdigest()[:16]  # what the packed store is keyed on
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(png)
    return row


#: rows of images done so far, one JSON line each, appended as they finish: what a killed run leaves to resume from
JOURNAL = ".manifest.journal.jsonl"


def _read_journal(path: Path) -> dict[str, dict]:
    """Rows a killed run recorded (a half-written last line is ignored)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "id" in row:
                rows[str(row["id"])] = row
    return rows


def preprocess_dataset(raw_dir: Path, out_dir: Path, method: str, size: int, workers: int | None = None,
                       progress: bool = True, splits: tuple[str, ...] = ("train", "test"),
                       hashed: bool = True) -> pd.DataFrame:
    """Prepare every training and test image of a competition folder once (or those of ``splits`` only); write the
    images and a manifest.

    Resumable, even after SIGKILL: each finished image is appended to a journal beside the images, and images whose
    output exists (outputs are written atomically, so an existing one is whole) keep their row, from the manifest or
    the journal. A bad or blank image is recorded in the manifest's status, not fatal. Worker processes end with
    the stage.
    """
    check_method(method)
    competition = detect_competition(raw_dir)
    items = [(i, "train") for i in read_labels(raw_dir, competition)["id"]] if "train" in splits else []
    test_ids = (read_test_ids(raw_dir, competition) or []) if "test" in splits else []
    both = sorted(set(test_ids) & {i for i, _ in items})
    if both:  # one prepared file would stand for two photographs
        raise UserError(f"{raw_dir}: id '{both[0]}' is in both {competition.labels_csv} and "
                        f"{competition.sample_submission} ({len(both)} such): an image is either a training or a test "
                        "image; remove it from one of them")
    items += [(i, "test") for i in test_ids]
    manifest_path, journal_path = out_dir / MANIFEST, out_dir / JOURNAL
    previous = {}
    if manifest_path.is_file():
        old = relative_paths(read_manifest_file(out_dir))
        previous = {r["id"]: r for r in old.to_dict("records")}
    previous.update(_read_journal(journal_path))
    # rows of an older release lack the gradability, the hash or the source's stamp: examined again
    previous = {i: r for i, r in previous.items() if r.get("status") in ("ok", "no_eye") and "digest" in r}
    done, jobs = {}, []
    for image_id, split in items:
        out_path = out_dir / f"{image_id}.png"
        source = competition.image_path(raw_dir, split, image_id)
        row = previous.get(image_id)
        if row and row.get("split") == split and out_path.is_file() and _same_source(row, source):
            done[image_id] = row
        else:
            jobs.append((image_id, split, str(source), str(out_path), method, size, hashed, str(raw_dir)))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    workers = workers if workers and workers > 0 else (os.cpu_count() or 1)
    if jobs:
        with progress_bar(total=len(jobs), desc=f"preprocess {method}-{size}", unit="img", show=progress) as bar, \
                open(journal_path, "a", encoding="utf-8") as journal:
            pool = process_pool(workers) if workers > 1 and len(jobs) > 8 else None
            with pool or contextlib.nullcontext():
                try:
                    for row in (pool.map(_process_one, jobs, chunksize=4) if pool else map(_process_one, jobs)):
                        done[row["id"]] = row
                        journal.write(json.dumps(row, default=str) + "\n")
                        journal.flush()
                        bar.update()
                except BrokenProcessPool:
                    raise UserError(f"preprocess: a worker process was killed (by the system, most often for "
                                    f"memory) after {len(done)} images: use fewer workers (--workers 1) or free "
                                    "memory; the images done so far are kept and a rerun goes on from there") \
                        from None
    manifest = pd.DataFrame([done[i] for i, _ in items if i in done], columns=COLUMNS)
    write_csv(manifest, manifest_path)
    journal_path.unlink(missing_ok=True)
    return absolute_paths(manifest, out_dir)


def _same_source(row: dict, source: Path) -> bool:
    """Whether the raw photograph is the one the row was prepared from (same size and modification time)."""
    stamp = source_stamp(source)
    try:
        recorded = tuple(int(str(row[k]).split(".")[0]) for k in ("source_size", "source_mtime"))  # exact integers
        return stamp is not None and recorded == stamp
    except (KeyError, TypeError, ValueError):
        return False


def preprocess(experiment: Experiment, workers: int | None = None) -> pd.DataFrame:
    """The preprocessing stage for an experiment: cache every image once at its method and size."""
    config = experiment.config
    manifest = preprocess_dataset(experiment.raw_dir, experiment.processed_dir, config.preprocess, config.image_size,
                                  workers=workers)
    status = manifest["status"].str.split(":").str[0].value_counts()
    print(f"preprocess: {len(manifest)} images → {experiment.processed_dir} ("
          + ", ".join(f"{k}: {v}" for k, v in status.items()) + ")")
    print(f"preprocess: {ungradable_line(manifest)}")
    for raw, _, out, _ in experiment.extra_sets():  # extra labelled sets: their training images only
        extra = preprocess_dataset(raw, out, config.preprocess, config.image_size, workers=workers,
                                   splits=("train",))
        print(f"preprocess: extra_data {raw.name}: {len(extra)} images → {out} ({ungradable_line(extra)})")
        if config.loader == "store":
            _pack(out, config.image_size, "train", workers, extra)
    if config.loader == "store":  # the test images train only as pseudo-labels; prediction reads the PNGs
        for split in ("train", "test") if config.pseudo_labels else ("train",):
            _pack(experiment.processed_dir, config.image_size, split, workers, manifest)
    return manifest


def _pack(folder: Path, size: int, split: str, workers: int | None, manifest: pd.DataFrame) -> None:
    """A split's packed image store (``loader=store``), and a line saying what it holds and takes."""
    from .store import ensure_store, human_bytes, store_bytes

    store = ensure_store(folder, size, split, workers=workers, manifest=manifest)
    n = store.shape[0]
    print(f"preprocess: packed store of {n} {split} images at {size} px ({human_bytes(store_bytes(n, size))}) "
          f"→ {store.files.store}")


def ungradable_line(manifest: pd.DataFrame) -> str:
    """One line: how many photographs cannot be graded, and why."""
    ungradable = manifest[~gradable_mask(manifest)]
    if ungradable.empty:
        return f"all {len(manifest)} photographs gradable"
    reasons = ungradable["ungradable_reason"].replace("", "unknown").value_counts()
    return (f"{len(ungradable)} of {len(manifest)} photographs not gradable ("
            + ", ".join(f"{reason}: {n}" for reason, n in reasons.items()) + ")")
