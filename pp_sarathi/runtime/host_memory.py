"""Keep freed host memory in the process instead of handing it back to the OS.

glibc's allocator returns large freed blocks to the kernel (``munmap`` above the mmap
threshold, heap trimming above the trim threshold). A stage step allocates the same tens to
hundreds of MB of activations again on the next step, and every page of that then comes back
through a page fault that the kernel zeroes: measured on a 2-core VM, 10k faults in a 14-request
decode step and 200k in a 14-prompt prefill step of the default model. Their cost swings with the
host's memory traffic, so step times vary with what ran before them (the previous step's shapes)
and not only with their own batch. Serving from a warm heap removes that: the process holds its
peak footprint, which an inference server needs at the next peak anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_TOP_PAD = 64 << 20  # grow the heap in steps of at least this much
_NEVER_TRIM = 2**31 - 1


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc only; once per process).

    Returns whether the allocator was reconfigured (False on other C libraries)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc exposes this; musl and others do not
    except (OSError, AttributeError):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(p, v) == 1 for p, v in
               ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_TOP_PAD, _TOP_PAD)))
