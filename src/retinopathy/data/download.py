"""Download a competition with the official Kaggle client and unpack it into ``data/raw/<competition>/``.

Archives are fetched into ``data/raw/<competition>/.downloads/`` and checked (size, then every member's CRC) before
anything is extracted; EyePACS's split archives (``train.zip.001``…) are joined first, nested archives
(``trainLabels.csv.zip`` inside the competition zip) unpacked in turn. Each archive is extracted through a temporary
folder and moved into place, and recorded as done, so an interrupted run redoes only what it had not finished and a
complete folder costs no network at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from ..competitions import Competition
from ..errors import UserError
from ..files import atomic_path, write_text
from ..progress import progress_bar
from .kaggle_client import kaggle_api, kaggle_errors

DOWNLOADS = ".downloads"
COMPLETE = ".download-complete.json"
_PART = re.compile(r"^(?P<base>.+\.zip)\.(?P<n>\d{3})$")
#: room kept free beyond the archive's contents when extracting
DISK_MARGIN = 256 * 2**20


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def check_zip(path: Path) -> None:
    """A complete, uncorrupted zip, or a UserError naming it (the bad archive is removed so a rerun fetches it)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad = f"unreadable ({e})"
    if bad:
        path.unlink(missing_ok=True)
        raise UserError(f"{path.name} is incomplete or corrupt (first bad member: {bad}); it was removed: "
                        "run the same command again to fetch it again")


def check_disk_space(archive: Path, dest: Path) -> None:
    """Refuse to extract an archive onto a disk without room for it (and a margin)."""
    with zipfile.ZipFile(archive) as z:
        need = sum(i.file_size for i in z.infolist())
    free = shutil.disk_usage(dest).free
    if need + DISK_MARGIN > free:
        raise UserError(f"not enough disk space to extract {archive.name}: it needs {_gb(need)} in {dest}, "
                        f"{_gb(free)} is free; free some space, or fetch fewer files with --files")


def extract(archive: Path, dest: Path, progress: bool = True) -> list[Path]:
    """Extract through a temporary folder, then move every member into place; returns the files placed."""
    check_disk_space(archive, dest)
    staging = dest / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    placed = []
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        with progress_bar(total=total, unit="B", unit_scale=True, desc=f"extract {archive.name}", show=progress) as bar:
            for m in members:
                target = (staging / m.filename).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise UserError(f"{archive.name}: member '{m.filename}' would land outside {dest}; refusing it")
                z.extract(m, staging)
                bar.update(m.file_size)
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = dest / src.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)
        placed.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return placed


def join_parts(parts: list[Path], joined: Path) -> Path:
    """Concatenate ``x.zip.001``, ``x.zip.002``… (one zip cut into pieces) into ``x.zip``, atomically."""
    with atomic_path(joined) as tmp, open(tmp, "wb") as out:
        for part in progress_bar(parts, desc=f"join {joined.name}", unit="part"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 * 2**20)
    return joined


def _done_marker(archive: Path) -> Path:
    return archive.with_name(archive.name + ".extracted")


def unpack(downloads: Path, dest: Path, progress: bool = True) -> None:
    """Unpack everything fetched into ``downloads`` into ``dest``: zips, split zips (joined once every part is
    there) and the archives found inside them; plain files are moved into place."""
    queue_again = True
    while queue_again:
        queue_again = False
        files = sorted(p for p in downloads.iterdir() if p.is_file() and not p.name.endswith((".extracted", ".tmp"))
                       and ".kaggle-partial" not in p.name)
        parts: dict[str, list[Path]] = {}
        for f in files:
            match = _PART.match(f.name)
            if match:
                parts.setdefault(match["base"], []).append(f)
        for base, group in parts.items():
            group.sort()
            numbers = [int(_PART.match(p.name)["n"]) for p in group]
            joined = downloads / base
            if _done_marker(joined).exists() or joined.exists():
                continue
            if numbers != list(range(1, len(numbers) + 1)):
                raise UserError(f"{base}: parts {numbers} found, some are missing; download all parts of {base}")
            join_parts(group, joined)
            check_zip(joined)
            for p in group:
                p.unlink()  # the joined zip holds the same bytes; no need to keep two copies of tens of GB
            queue_again = True
        for f in files:
            if _PART.match(f.name) or not f.exists():
                continue
            if f.suffix == ".zip":
                if _done_marker(f).exists():
                    continue
                check_zip(f)
                placed = extract(f, dest, progress)
                # Archives inside archives (the competition zip holds train.zip.001…, trainLabels.csv.zip): queue them.
                for p in placed:
                    if p.suffix == ".zip" or _PART.match(p.name):
                        os.replace(p, downloads / p.name)
                        queue_again = True
                write_text(_done_marker(f), "")
            else:
                os.replace(f, dest / f.name)  # a plain file (csv) served as is


def download(competition: Competition, raw_dir: Path, files: list[str] | None = None, force: bool = False,
             progress: bool = True) -> bool:
    """Fetch and unpack a competition (or ``files`` of it) into ``raw_dir``. Returns False when everything asked
    for was already there (no network used)."""
    raw_dir = Path(raw_dir)
    complete = raw_dir / COMPLETE
    wanted = sorted(files) if files else ["*"]
    if complete.is_file() and not force:
        done = json.loads(complete.read_text()).get("files", [])
        if "*" in done or set(wanted) <= set(done):
            print(f"{raw_dir}: {competition.slug} already downloaded and unpacked ({', '.join(wanted)}); "
                  "nothing to fetch (--force to fetch again)")
            return False
    downloads = raw_dir / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    api = kaggle_api()
    slug = competition.slug
    if files:
        for name in files:
            part = _PART.match(name)
            joined = downloads / part["base"] if part else None
            if (_done_marker(downloads / name).exists() or (raw_dir / name).exists()
                    or (joined is not None and (_done_marker(joined).exists() or joined.exists()))):
                print(f"{name}: already unpacked, skipped")
                continue
            with kaggle_errors(slug, name):
                api.competition_download_file(slug, name, path=str(downloads), force=force, quiet=not progress)
    else:
        archive = downloads / f"{slug}.zip"
        if not _done_marker(archive).exists():
            with kaggle_errors(slug):
                api.competition_download_files(slug, path=str(downloads), force=force, quiet=not progress)
    unpack(downloads, raw_dir, progress)
    done = set(json.loads(complete.read_text()).get("files", [])) if complete.is_file() else set()
    write_text(complete, json.dumps({"competition": slug, "files": sorted(done | set(wanted))}, indent=1))
    return True


def list_files(competition: Competition) -> list[tuple[str, int]]:
    """The competition's files and sizes, as Kaggle lists them."""
    api = kaggle_api()
    out, token = [], None
    with kaggle_errors(competition.slug):
        while True:
            page = api.competition_list_files(competition.slug, page_token=token, page_size=200)
            out += [(f.name, int(f.total_bytes or 0)) for f in page.files]
            token = page.next_page_token
            if not token:
                return out
