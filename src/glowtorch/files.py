"""Small file helpers shared by every module that writes: atomic writes and writable folders."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "append_line",
    "atomic_write",
    "current_umask",
    "disk_full",
    "ensure_writable_dir",
    "exclusive_temp",
    "first_line",
    "remove_stale_temps",
]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty (an
    ``OSError`` raised with an errno and a message of ours gives that message, without ``[Errno N]``)."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror and error.filename is None and error.errno:
        text = error.strerror
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


TEMP_MARK = ".glowtorch-tmp-"
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.glowtorch-tmp-[a-z0-9_]{8}$")


def exclusive_temp(path: str | Path) -> Path:
    """A new empty file beside ``path`` named ``.NAME.glowtorch-tmp-XXXXXXXX`` (random), created with
    ``O_EXCL`` and mode 0600: no planted file or symbolic link can be written through, and the name marks it
    as glowtorch's own (``remove_stale_temps`` removes only such names)."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", dir=path.parent)
    os.close(handle)
    return Path(name)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Removes the temporaries a killed write of glowtorch's left in ``folder`` (regular files named as
    ``exclusive_temp`` names them, never a link, a folder or any other name); returns them."""
    removed = []
    for entry in Path(folder).glob(f".*{TEMP_MARK}*"):
        if TEMP_PATTERN.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Calls ``write(temporary_path)``, fsyncs, then renames onto ``path``: readers never see half a file,
    and a failed write leaves the old file as it was. The temporary is created by ``exclusive_temp`` (never a
    name someone else chose). The file gets the mode the user's other new files get (0644 under the usual
    umask). A full disk is an ``OSError`` naming the file, whatever library wrote it."""
    path = Path(path)
    tmp = exclusive_temp(path)
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
                if hasattr(os, "fchmod"):  # POSIX: the mode of the file itself, never a link's target
                    os.fchmod(f.fileno(), 0o666 & ~current_umask())
        except Exception as error:
            if disk_full(error, path.parent):
                raise OSError(errno.ENOSPC, f"cannot write {path}: the disk is full") from None
            raise
        os.replace(tmp, path)
    finally:
        if tmp.exists() and not tmp.is_symlink():
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


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | Path) -> Path:
    """Creates ``path`` if needed and checks that files can be written in it; ``ValueError`` if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # O_EXCL, a random name, gone when closed
            pass
    except OSError as error:
        raise ValueError(
            f"cannot write to {path} ({error.strerror or error}); choose another output directory"
        ) from None
    return path
