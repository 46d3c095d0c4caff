"""Host tuning for the stages that share this machine: CPU threads and the allocator.

The allocator keeps freed host memory in the process instead of handing it back to the OS:
glibc returns large freed blocks to the kernel, and a stage step allocates the same tens to
hundreds of MB of activations again on the next step, every page of which then comes back
through a zeroing page fault whose cost swings with the host's memory traffic (measurements
in docs/benchmarks.md). Serving from a warm heap removes that; the process holds its peak
footprint, which an inference server needs at the next peak anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch


def set_threads(local_stages: int, override: int = 0) -> None:
    """Give each local stage an equal share of the cores (or ``override`` threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(override if override > 0 else max(1, cores // max(1, local_stages)))


def prepare_host(local_stages: int, parallel, threads: int = 0) -> None:
    """Threads for one of ``local_stages`` stages (``threads``, else ``parallel.threads_per_stage``,
    else an equal share) and, if ``parallel.keep_freed_memory``, a warm heap
    (below); called at the start of a stage process and of the profile's."""
    set_threads(local_stages, threads or parallel.threads_per_stage)
    if parallel.keep_freed_memory:
        keep_freed_memory()


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
