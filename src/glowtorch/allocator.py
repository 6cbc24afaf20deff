"""CPU memory allocator setting: keep freed tensor memory in the process for reuse.

glibc's malloc serves large blocks (above a threshold that starts at 128 KiB) with fresh ``mmap``
pages and returns them to the system on free, so every new activation tensor of a pass costs page
faults as its pages are first touched. Raising that threshold to glibc's maximum (32 MiB) and the
trim threshold to 1 GiB lets freed tensors' memory be reused as it is. The process's resident memory
then stays near its peak instead of shrinking between passes, as PyTorch's CUDA caching allocator
does on a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Applies the setting to this process; True where it took effect (Linux with glibc), else False.

    The ``glowtorch`` command calls it; call it in your own scripts for the same CPU speed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
