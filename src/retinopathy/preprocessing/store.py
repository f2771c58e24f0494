"""The packed image store: every prepared image of a processed folder, at its training size, in one uint8 array
file (NumPy's ``.npy``, read memory-mapped) with an index table beside it. A batch is a gather of rows: no PNG
decoding, no per-image Python, and the operating system's page cache instead of a copy in the process.

Files in the processed folder, beside the PNGs (which stay, for people and for the web page), one store per split
(``train``; ``test`` only where pseudo-labels train on the test images):

  images-<split>.npy         (N, size, size, 3) uint8, RGB, exactly the pixels the PNGs decode to
  images-<split>-index.csv   id, path, row: where each image sits
  images-<split>.json        what it was packed from (a digest of the split's images and their files), its shape

Packing is resumable: rows are written in chunks to ``.images-<split>.npy.partial`` and a mark says how many are done
(only after they are on disk); a rerun of the same images goes on from there. The store is renamed into place and
its mark written last, so a reader never sees a half-written store; one that no longer matches the PNGs (the folder
was preprocessed again) is refused, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.manifest import read_manifest_file, relative_paths
from ..errors import UserError
from ..files import locked, write_csv, write_faults_named, write_text
from ..progress import progress_bar


@dataclass(frozen=True)
class StoreFiles:
    """The files of one split's store in a processed folder."""

    folder: Path
    split: str = "train"

    @property
    def store(self) -> Path:
        """The array itself."""
        return self.folder / f"images-{self.split}.npy"

    @property
    def index(self) -> Path:
        """id, path, row of each image."""
        return self.folder / f"images-{self.split}-index.csv"

    @property
    def mark(self) -> Path:
        """What the store was packed from, written last."""
        return self.folder / f"images-{self.split}.json"

    @property
    def partial(self) -> Path:
        """The store while it is being packed."""
        return self.folder / f".images-{self.split}.npy.partial"

    @property
    def partial_mark(self) -> Path:
        """How many rows of the partial store are on disk."""
        return self.folder / f".images-{self.split}.partial.json"

#: rows decoded and written between two marks of a resumable pack
CHUNK = 256


def store_bytes(n_images: int, size: int) -> int:
    """Bytes a store of ``n_images`` at ``size`` px takes on disk (the ``.npy`` header aside)."""
    return n_images * size * size * 3


def _packable(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest's rows of ``split`` that have a prepared image (``path`` absolute, ``digest`` its content)."""
    path = manifest["path"].fillna("").astype(str)
    keep = (path != "") & (manifest["split"].astype(str) == split if "split" in manifest else True)
    if "digest" not in manifest:
        manifest = manifest.assign(digest="")
    return manifest.loc[keep, ["id", "path", "digest"]].astype(str).reset_index(drop=True)


def store_key(rows: pd.DataFrame) -> str:
    """What a store is packed from: each image's id, file name, content digest (recorded by preprocessing as it
    wrote the PNG) and file size and time (a PNG changed since, by preprocessing or anything else, changes it).
    Paths count by file name alone, so a moved data folder keeps its store."""
    digest = hashlib.sha256()
    for image_id, path, content in zip(rows["id"], rows["path"], rows["digest"], strict=False):
        try:
            stat = os.stat(path)
        except OSError:
            raise UserError(f"{path}: prepared image missing: run retinopathy preprocess again") from None
        digest.update(f"{image_id}\0{Path(path).name}\0{content}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def human_bytes(n: int) -> str:
    """A size in the unit that shows it best: 512 B, 3.4 MB, 1.6 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _read_json(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _decode(path: str, size: int) -> np.ndarray:
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path}: prepared image unreadable: run retinopathy preprocess again")
    if bgr.shape[:2] != (size, size):
        raise UserError(f"{path}: {bgr.shape[1]}x{bgr.shape[0]} px, not {size}x{size} as the store of its folder "
                        "needs: run retinopathy preprocess again")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _create_partial(path: Path, shape: tuple[int, ...]) -> int:
    """An ``.npy`` file of ``shape`` uint8 with its space reserved; returns the data's byte offset. A disk too
    small fails here, in one line, before any image is decoded."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    offset = header.offset
    del header
    needed = int(np.prod(shape)) + offset
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, needed)
        except OSError as e:
            path.unlink(missing_ok=True)
            free = os.statvfs(path.parent)
            raise UserError(f"{path.parent}: the image store needs {human_bytes(needed)} and the disk has "
                            f"{human_bytes(free.f_bavail * free.f_frsize)} free ({os.strerror(e.errno)}): free "
                            "space, or train with loader=png") from None
    return offset


def pack_store(folder: str | os.PathLike, size: int, split: str = "train", workers: int | None = None,
               progress: bool = True, manifest: pd.DataFrame | None = None) -> Path:
    """Pack every prepared image of ``split`` in a processed ``folder`` (its manifest's images, at ``size`` px) into
    the split's store, unless a store of exactly these images is there; resumes an interrupted pack. Returns the
    store's path."""
    folder = Path(folder)
    files = StoreFiles(folder, split)
    if manifest is None:
        manifest = read_manifest_file(folder)
    rows = _packable(manifest, split)
    key = store_key(rows)
    with locked(folder / ".store.lock", f"the image store of {folder}", wait=True):
        mark = _read_json(files.mark)
        if mark.get("key") == key and files.store.is_file() and files.index.is_file() and \
                _index_matches(files, rows, mark):
            return files.store
        shape = (len(rows), size, size, 3)
        partial, partial_mark = files.partial, files.partial_mark
        state = _read_json(partial_mark)
        resumable = state.get("key") == key and state.get("shape") == list(shape) and partial.is_file() and \
            partial.stat().st_size == int(state.get("offset", -1)) + store_bytes(len(rows), size)  # not cut short
        offset = state["offset"] if resumable else _create_partial(partial, shape)
        done = int(state.get("done", 0)) if resumable else 0
        row_bytes = size * size * 3
        with open(partial, "r+b") as handle, write_faults_named(partial), \
                ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool, \
                progress_bar(total=len(rows), initial=done, desc=f"pack {folder.name}", unit="img",
                             show=progress) as bar:
            for start in range(done, len(rows), CHUNK):
                paths = rows["path"].iloc[start:start + CHUNK].tolist()
                images = np.stack(list(pool.map(lambda p: _decode(p, size), paths)))  # OpenCV frees the GIL
                os.pwrite(handle.fileno(), images.tobytes(), offset + start * row_bytes)
                os.fsync(handle.fileno())  # on disk before the mark says so
                write_text(partial_mark, json.dumps({"key": key, "shape": list(shape), "offset": offset,
                                                     "done": start + len(paths)}))
                bar.update(len(paths))
        write_csv(relative_paths(rows[["id", "path"]]).assign(row=np.arange(len(rows))), files.index)
        files.mark.unlink(missing_ok=True)  # never the old mark beside the new store
        os.replace(partial, files.store)
        write_text(files.mark, json.dumps({"key": key, "shape": list(shape)}))
        partial_mark.unlink(missing_ok=True)
    return files.store


def _index_matches(files: StoreFiles, rows: pd.DataFrame, mark: dict) -> bool:
    """Whether a store's index and size agree with the images it was packed from (else it is packed again)."""
    try:
        ImageStore._read(files, rows, mark)
    except UserError:
        return False
    return True


@dataclass
class ImageStore:
    """A packed store opened for reading: ``images`` (memory-mapped, opened on first use, so a store travels to
    another process as its folder alone) and the row of each prepared image's path."""

    files: StoreFiles
    rows: dict[str, int]
    shape: tuple[int, ...]

    @classmethod
    def open(cls, folder: str | os.PathLike, split: str = "train") -> ImageStore:
        """The store of ``split`` in ``folder``, refused in one line where it is missing or no longer matches
        the PNGs."""
        files = StoreFiles(Path(folder), split)
        mark = _read_json(files.mark)
        if not mark or not files.store.is_file() or not files.index.is_file():
            raise UserError(f"{folder}: no packed image store of its {split} images: run retinopathy preprocess "
                            "with loader=store")
        rows = _packable(read_manifest_file(files.folder), split)
        if mark.get("key") != store_key(rows):
            raise UserError(f"{files.store}: packed from other images than the folder's manifest lists now: "
                            "run retinopathy preprocess with loader=store to pack it again")
        return cls._read(files, rows, mark)

    @classmethod
    def _read(cls, files: StoreFiles, rows: pd.DataFrame, mark: dict | None = None) -> ImageStore:
        """A store whose key matches ``rows`` (its manifest's images): its index, checked to list exactly those
        images in packing order (a shifted row would train on its neighbour's pixels), and its size checked
        against its shape."""
        mark = mark or _read_json(files.mark)
        shape = tuple(mark.get("shape", ()))
        try:
            index = pd.read_csv(files.index, dtype={"id": str, "path": str})
            listed = (index["id"].tolist(), index["path"].tolist(), index["row"].astype(int).tolist())
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            listed = None
        expected = (rows["id"].tolist(), [Path(p).name for p in rows["path"]], list(range(len(rows))))
        data_bytes = store_bytes(shape[0], shape[1]) if len(shape) == 4 else -1
        if listed != expected or len(shape) != 4 or shape[0] != len(rows) or \
                files.store.stat().st_size < data_bytes or files.store.stat().st_size > data_bytes + 4096:
            raise UserError(f"{files.store}: its index ({files.index.name}) or size does not match the images it "
                            "was packed from: run retinopathy preprocess with loader=store to pack it again")
        paths = [str(files.folder / name) for name in expected[1]]
        return cls(files, dict(zip(paths, expected[2], strict=False)), shape)

    @property
    def images(self) -> np.ndarray:
        """(N, size, size, 3) uint8, memory-mapped read-only."""
        if getattr(self, "_images", None) is None:
            self._images = np.load(self.files.store, mmap_mode="r")
        return self._images

    def read_rows(self, rows, out: np.ndarray) -> np.ndarray:
        """Rows ``rows`` read into ``out`` (len(rows), size, size, 3), one ``pread`` each: twice to three times
        the speed of a gather through the memory map, which takes a page fault per 4 KB."""
        if getattr(self, "_fd", None) is None:
            self._fd = os.open(self.files.store, os.O_RDONLY)
        offset, row_bytes = self.images.offset, int(np.prod(self.shape[1:]))
        for j, row in enumerate(rows):
            view = memoryview(out[j]).cast("B")
            if os.preadv(self._fd, [view], offset + int(row) * row_bytes) != row_bytes:
                raise UserError(f"{self.files.store}: cut short at row {row}: run retinopathy preprocess with "
                                "loader=store to pack it again")
        return out

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_images", "_fd")}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def row_of(self, path: str) -> int:
        """The store's row of a prepared image, or one line where the store does not hold it."""
        try:
            return self.rows[str(path)]
        except KeyError:
            raise UserError(f"{path}: not in the packed store {self.files.store}: run retinopathy preprocess "
                            "with loader=store to pack it again") from None


def ensure_store(folder: str | os.PathLike, size: int, split: str = "train", workers: int | None = None,
                 progress: bool = True, manifest: pd.DataFrame | None = None) -> ImageStore:
    """The store of ``split`` in a processed folder, packed first where it is missing or stale (``manifest``: the
    folder's, where the caller has it)."""
    if manifest is None:
        manifest = read_manifest_file(folder)
    pack_store(folder, size, split, workers=workers, progress=progress, manifest=manifest)
    return ImageStore._read(StoreFiles(Path(folder), split), _packable(manifest, split))  # key just checked
