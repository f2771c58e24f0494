"""Files and processes: atomic writes (a reader never sees a half-written output, and an interrupted stage leaves no
partial file), and worker pools whose processes die with the stage that started them."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from .errors import UserError

#: what temporary files of :func:`atomic_path` end with
TEMP_SUFFIX = ".tmp"


def _process_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds. The file gets
    the permissions any new file of the process would get (mkstemp's are private to the owner)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with write_faults_named(path):
            yield tmp
            if tmp.exists():
                os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def write_faults_named(path: str | os.PathLike) -> Iterator[None]:
    """Give a write fault inside the block a path: a writer that fails on close names no file, and torch.save
    reports a full disk as a RuntimeError ("PytorchStreamWriter failed writing file ...: file write failed")."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except RuntimeError as e:
        # torch.save's zip writer says a full disk as "file write failed", or as "[enforce fail at
        # inline_container.cc] unexpected pos" where the disk filled between two of its writes
        said = str(e)
        if "write failed" in said or "No space left" in said or (
                "inline_container" in said and _nearly_full(Path(path))):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise


def _nearly_full(path: Path, margin: int = 64 * 2**20) -> bool:
    """Whether the disk holding ``path`` (or its nearest existing folder) has less than ``margin`` bytes free."""
    import shutil

    existing = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free < margin


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete what killed writers left in ``folder`` (their ``.<name>.*.tmp`` files); returns how many."""
    stale = list(Path(folder).glob(f".*{TEMP_SUFFIX}")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def die_with_parent(parent: int | None = None) -> None:
    """In a worker: ask Linux to kill this process when its parent dies (a SIGKILLed stage leaves no orphans); a
    worker whose ``parent`` (its pid) died before it asked ends at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the pool's own shutdown still ends the workers on a normal exit
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes that end with the stage that started them, however it ends."""
    return ProcessPoolExecutor(workers, initializer=die_with_parent)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as CSV (no index) atomically."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a small file holding the holder's process id) while the block runs:
    a second run of the same work is refused in one line naming the process that holds it, or, with ``wait``,
    waits its turn (a read-modify-write of a shared file). The operating system releases it when the process
    ends, however it ends."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{what} is in use by process {holder} (lock {path}): wait for it to finish, or stop "
                            "it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
