"""Small file helpers shared by every module that writes: atomic writes and writable folders."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "ensure_writable_dir", "first_line"]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    lines = str(error).strip().splitlines()
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
            if _disk_full(error):
                raise OSError(errno.ENOSPC, f"cannot write {path}: the disk is full") from None
            raise
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _disk_full(error: BaseException) -> bool:
    """Whether an error from any writer (Python, safetensors, PIL, matplotlib) means no space was left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "StorageFull" in str(error)


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
