"""Which CPUs each stage's threads run on (``parallel.bind_cores``).

OpenMP threads that may run anywhere spin-wait at every barrier while a partner thread is
descheduled, and stages sharing a host then slow each other down several-fold under load
(docs/benchmarks.md). Bound, each local stage gets its own cores, one thread per core: a stage
process started here gets its CPU mask before it starts (inherited at fork) and libgomp's
binding variables (read when it loads torch); a process whose OpenMP runtime is already running
(pp=1 in the caller's process, ranks started by torchrun or deepspeed) confines its threads
itself and pins the OpenMP team of the thread that computes.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
from typing import Iterator, Sequence

import torch

log = logging.getLogger("pp_sarathi")


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, sorted (its affinity mask: taskset and cpusets narrow it)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def stage_threads(local_stages: int, override: int = 0, cpus: int | None = None) -> int:
    """Torch threads of one of ``local_stages`` stages: ``override``, else an equal share of
    ``cpus`` (default: the usable CPUs)."""
    if override > 0:
        return override
    cpus = len(usable_cpus()) if cpus is None else cpus
    return max(1, cpus // max(1, local_stages))



# libgomp's binding for a stage process started here, read when the process loads torch. Its
# mask holds exactly one CPU per thread, so a place per CPU ("threads") puts one thread on each;
# "cores" would merge SMT siblings into one place when a stage is given both.
OMP_BIND_ENV = {"OMP_PROC_BIND": "close", "OMP_PLACES": "threads"}
# Set by a user, these keep their meaning: the OpenMP runtime places its own threads.
USER_OMP_ENV = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")

# The cores this process bound itself to (bind_threads), until restore_threads.
_bound: list[int] | None = None


def assign_cores(cpus: Sequence[int], local_rank: int, threads: int) -> list[int]:
    """Cores of local stage ``local_rank`` with ``threads`` threads: the CPUs from
    ``local_rank * threads`` on, ``threads`` of them, in the sorted ``cpus``."""
    cpus = sorted(cpus)
    lo = local_rank * threads
    if threads < 1 or local_rank < 0 or lo + threads > len(cpus):
        raise ValueError(f"local stage {local_rank} with {threads} threads needs CPUs {lo}..{lo + threads - 1} "
                         f"of the sorted list, which has {len(cpus)}")
    return cpus[lo:lo + threads]


def plan_cores(parallel, local_stages: int, device_type: str,
               cpus: Sequence[int] | None = None) -> list[list[int]] | None:
    """The cores of each of this host's ``local_stages`` stages under ``parallel.bind_cores``, or
    None (the threads float). ``cpus``: the CPUs the stages may use (default: this process's).
    Raises ValueError for ``bind_cores=on`` when the stages do not fit on distinct cores."""
    mode = str(parallel.bind_cores)
    if mode == "off" or (mode == "auto" and device_type != "cpu"):
        return None
    cpus = sorted(usable_cpus() if cpus is None else cpus)
    threads = stage_threads(local_stages, parallel.threads_per_stage, len(cpus))
    if local_stages * threads > len(cpus):
        if mode == "auto":
            return None
        raise ValueError(f"parallel.bind_cores=on: {local_stages} local stages x {threads} threads need "
                         f"{local_stages * threads} cores, this process may use {len(cpus)} "
                         f"({cpulist(cpus)}); lower parallel.threads_per_stage or parallel.pp, "
                         f"or set parallel.bind_cores=auto or off")
    return [assign_cores(cpus, r, threads) for r in range(local_stages)]


def cpulist(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5`` (the kernel's cpulist format)."""
    out: list[str] = []
    for c in sorted(cpus):
        if out and int(out[-1].rsplit("-", 1)[-1]) == c - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def log_cores(stage: int, cores: Sequence[int]) -> None:
    log.info("stage %d: %d thread%s bound to core%s %s", stage, len(cores), "" if len(cores) == 1 else "s",
             "" if len(cores) == 1 else "s", cpulist(cores))


@contextlib.contextmanager
def child_binding(cores: Sequence[int] | None) -> Iterator[None]:
    """Processes started inside begin on ``cores``: the calling thread's CPU mask (a child
    inherits it at fork) and :data:`OMP_BIND_ENV` unless the user set them, so libgomp places
    one thread per core when the child loads torch. Both are put back after."""
    if not cores:
        yield
        return
    mask = os.sched_getaffinity(0)
    added = [k for k in OMP_BIND_ENV if k not in os.environ]
    os.environ.update({k: OMP_BIND_ENV[k] for k in added})
    os.sched_setaffinity(0, set(cores))
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)
        for k in added:
            os.environ.pop(k, None)


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread only
        return [threading.get_native_id()]


def bind_threads(cores: Sequence[int]) -> dict[int, set[int]]:
    """Confine every thread of this process to ``cores`` (one already inside keeps its narrower
    mask: libgomp's own placement, or a child started by :func:`child_binding`), then pin the
    calling thread's OpenMP team, one thread per core (:func:`pin_compute_thread`). Threads
    started later inherit their creator's mask. Returns the previous masks."""
    global _bound
    target = set(cores)
    previous: dict[int, set[int]] = {}
    for tid in _thread_ids():
        try:
            mask = os.sched_getaffinity(tid)
            if (mask & target) != mask:
                os.sched_setaffinity(tid, (mask & target) or target)
            previous[tid] = mask
        except OSError:  # the thread ended meanwhile
            pass
    _bound = sorted(target)
    pin_compute_thread()
    return previous


def restore_threads(previous: dict[int, set[int]]) -> None:
    """Undo :func:`bind_threads` (a thread started since gets the calling thread's old mask)."""
    global _bound
    _bound = None
    default = previous.get(threading.get_native_id())
    for tid in _thread_ids():
        mask = previous.get(tid, default)
        try:
            if mask:
                os.sched_setaffinity(tid, mask)
        except OSError:
            pass


_TEAM_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.lru_cache(maxsize=1)
def _libgomp():
    """The libgomp torch loaded (None: another OpenMP runtime, or none)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line and "/" in line}
    except OSError:
        return None
    if not paths:
        return None
    lib = ctypes.CDLL(sorted(paths)[0])  # already loaded: the same library torch calls
    lib.omp_get_thread_num.restype = ctypes.c_int
    lib.omp_get_proc_bind.restype = ctypes.c_int
    lib.GOMP_parallel.argtypes = [_TEAM_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    return lib


def pin_compute_thread() -> None:
    """Pin the calling thread's OpenMP team (the threads its torch ops run on: libgomp keeps a
    team per calling thread) one thread per core of this process's binding. Nothing when this
    process did not bind itself, when the OpenMP runtime places its threads itself (binding
    variables in the environment, as in a child of :func:`child_binding`), or when it is not
    libgomp. A thread that computes calls this when it starts (stage 0 has its own thread)."""
    cores = _bound
    if not cores or any(k in os.environ for k in USER_OMP_ENV):
        return
    gomp = _libgomp()
    if gomp is None or gomp.omp_get_proc_bind() != 0:
        return

    def pin(_):  # runs once on every thread of the team
        try:
            os.sched_setaffinity(0, {cores[gomp.omp_get_thread_num() % len(cores)]})
        except OSError:
            pass

    fn = _TEAM_FN(pin)
    gomp.GOMP_parallel(fn, None, min(torch.get_num_threads(), len(cores)), 0)


def cpu_report(clock) -> dict:
    """results.json's view of this stage process: torch threads, the CPUs its threads may run on
    (the union of their masks), whether this run bound them, and the CPU time and page faults
    since the run's stage clock started (``StageClock.cpu_used``)."""
    cpus: set[int] = set()
    if hasattr(os, "sched_getaffinity"):
        for tid in _thread_ids():
            try:
                cpus |= os.sched_getaffinity(tid)
            except OSError:
                pass
    return {"threads": torch.get_num_threads(), "cores": sorted(cpus), "cores_bound": _bound is not None,
            **clock.cpu_used()}
