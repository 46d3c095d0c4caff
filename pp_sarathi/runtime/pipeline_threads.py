"""CPU threads for the stages that share this machine."""
from __future__ import annotations

import os

import torch


def set_threads(local_stages: int, override: int = 0) -> None:
    """Give each local stage an equal share of the cores (or ``override`` threads)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(override if override > 0 else max(1, cores // max(1, local_stages)))
