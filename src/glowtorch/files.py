"""Small file helpers shared by every module that writes: atomic writes and writable folders."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["append_line", "atomic_write", "disk_full", "ensure_writable_dir", "first_line"]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty (an
    ``OSError`` raised with an errno and a message of ours gives that message, without ``[Errno N]``)."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror and error.filename is None and error.errno:
        text = error.strerror
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Calls ``write(temporary_path)``, fsyncs, then renames onto ``path``: readers never see half a file,
    and a failed write leaves the old file as it was. The file gets the mode the user's other new files
    get (0644 under the usual umask). A full disk is an ``OSError`` naming the file, whatever library
    wrote it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except Exception as error:
            if disk_full(error, path.parent):
                raise OSError(errno.ENOSPC, f"cannot write {path}: the disk is full") from None
            raise
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


NEARLY_FULL_BYTES = 256 * 1024  # free space below this, right after a write failed, means the write ran out of it


def disk_full(error: BaseException, folder: str | Path | None = None) -> bool:
    """Whether an error from any writer means no space was left: the errno or message says so (Python,
    safetensors, PIL, matplotlib), or, for writers whose message does not (``torch.save`` raises
    ``RuntimeError: ... unexpected pos`` or ``iostream error``), ``folder``'s file system has (almost) no
    free space left right after the failure."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    if "No space left on device" in str(error) or "StorageFull" in str(error):
        return True
    if folder is None:
        return False
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES


def append_line(path: str | Path, line: str) -> None:
    """Appends ``line`` and a newline to a text file; a failed write (a full disk) leaves the file as it was,
    never with half a line, and raises the ``OSError`` of ``atomic_write``."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        with open(path, "r+") as f:
            f.truncate(size)
        if disk_full(error, path.parent):
            raise OSError(errno.ENOSPC, f"cannot write {path}: the disk is full") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | Path) -> Path:
    """Creates ``path`` if needed and checks that files can be written in it; ``ValueError`` if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".glowtorch-write-test-{os.getpid()}"  # per process: ranks check at once
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"cannot write to {path} ({error.strerror or error}); choose another output directory"
        ) from None
    return path
