"""Host tuning for the stages that share this machine: CPU threads, their cores (runtime/cores.py),
the allocator.

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
from typing import Sequence

import torch

from .cores import bind_threads, stage_threads


def set_threads(local_stages: int, override: int = 0) -> None:
    """Give each local stage an equal share of the cores (or ``override`` threads)."""
    torch.set_num_threads(stage_threads(local_stages, override))


def prepare_host(local_stages: int, parallel, threads: int = 0, cores: Sequence[int] | None = None):
    """Threads for one of ``local_stages`` stages (``threads``, else ``parallel.threads_per_stage``,
    else one per core of ``cores``, else an equal share), this process's threads bound to
    ``cores`` (:func:`~.cores.bind_threads`) and, if ``parallel.keep_freed_memory``, a warm heap (below);
    called at the start of a stage process and of the profile's. Returns the threads' previous
    CPU masks when it bound them (for :func:`~.cores.restore_threads`), else None."""
    bound_onednn_caches()
    set_threads(local_stages, threads or parallel.threads_per_stage or len(cores or ()))
    previous = bind_threads(cores) if cores else None
    if parallel.keep_freed_memory:
        keep_freed_memory()
    return previous


# oneDNN (the CPU linear layers) keeps a compiled kernel per input shape in two caches of 1024
# entries each by default; a run whose batches take many token counts fills them for hundreds
# of MB. Bounded here, a stage's memory stays flat once they are full (users may set their own).
ONEDNN_CACHE_ENTRIES = "128"


def bound_onednn_caches() -> None:
    """Cap oneDNN's kernel caches; effective before the process's first oneDNN call."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_ENTRIES)
    os.environ.setdefault("LRU_CACHE_CAPACITY", ONEDNN_CACHE_ENTRIES)


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
