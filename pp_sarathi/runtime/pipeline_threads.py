"""Host resources of the stages that share this machine: CPU threads and the allocator."""
from __future__ import annotations

import os

import torch


def set_threads(local_stages: int, override: int = 0) -> None:
    """Give each local stage an equal share of the cores (or ``override`` threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(override if override > 0 else max(1, cores // max(1, local_stages)))


def prepare_host(local_stages: int, parallel, threads: int = 0) -> None:
    """Threads for one of ``local_stages`` stages (``threads``, else ``parallel.threads_per_stage``,
    else an equal share) and, if ``parallel.keep_freed_memory``, a warm heap
    (runtime/host_memory.py); called at the start of a stage process and of the profile's."""
    from .host_memory import keep_freed_memory

    set_threads(local_stages, threads or parallel.threads_per_stage)
    if parallel.keep_freed_memory:
        keep_freed_memory()
