"""Co-running stages: how many other stage processes share the host with the profiled one,
and the processes that run whatever point the profiler is timing meanwhile.

Protocol: a co-runner prints ``ready`` once its :class:`~.bench.Bench` is built; then for
every line ``i`` on its stdin it switches to point ``i`` (``-1``: idle) and answers ``ok``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import select
import sys

import torch

from ...config import RunConfig
from ...runtime.host import prepare_host
from .bench import Bench
from .workers import MODULE


def host_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def profile_threads_and_corunners(cfg: RunConfig, device: torch.device) -> tuple[int, int]:
    """(torch threads, co-running processes) of a profile: what one stage of a ``parallel.pp``
    pipeline on this host gets (runtime/host.py) and how many other stages share
    the host with it. Auto: ``pp - 1`` on a CPU, but at most as many as have cores of their
    own; more stages than cores time-share them, which the simulation models itself."""
    cores = host_cores()
    pp = max(1, cfg.parallel.pp)
    threads = cfg.sim.profile_threads or cfg.parallel.threads_per_stage or max(1, cores // pp)
    corunners = cfg.sim.profile_corunners
    if corunners < 0:
        corunners = min(pp, max(1, cores // threads)) - 1 if device.type == "cpu" else 0
    return threads, corunners


class Corunners:
    """Processes that build the same :class:`~.bench.Bench` and run whatever point the profiler is
    timing, in a loop, so every measurement sees the contention of the other pipeline stages
    on this host (cores, caches, memory bandwidth)."""

    def __init__(self, cfg: RunConfig, n: int, threads: int):
        import subprocess

        self.procs = []
        self.unacked = 0
        if n <= 0:
            return
        arg = json.dumps({"threads": threads, "cfg": dataclasses.asdict(cfg)})
        self.procs = [subprocess.Popen([sys.executable, "-m", MODULE, "corunner", arg],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True) for _ in range(n)]

    def wait_ready(self) -> None:
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a co-running profile process failed to start")

    def run(self, i: int, wait: bool = True) -> None:
        """Every co-runner switches to point ``i`` (``-1``: idle) once its current call is done;
        with ``wait``, returns when they have (else a co-runner may still finish a call of the
        previous, similar point while the next one is timed)."""
        for p in self.procs:
            p.stdin.write(f"{i}\n")
            p.stdin.flush()
        self.unacked += 1
        if wait:
            for p in self.procs:
                for _ in range(self.unacked):
                    p.stdout.readline()
            self.unacked = 0

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def corunner_main(a: dict) -> None:
    """A co-running process (``a``: the config and thread count); returns when stdin closes."""
    from ..fidelity import run_config_from_dict

    cfg = run_config_from_dict(a["cfg"])
    prepare_host(1, cfg.parallel, threads=a["threads"])
    fd = sys.stdin.fileno()
    with torch.inference_mode():
        bench = Bench(cfg, torch.device("cpu"))
        print("ready", flush=True)
        fn, flush, buf = None, None, b""
        while True:
            # Raw reads (not sys.stdin's buffer, which select() cannot see): every queued command
            # is taken before the next call.
            if fn is None or select.select([fd], [], [], 0)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if lines:  # only the newest command matters
                    i = int(lines[-1])
                    fn = bench.points[i].setup() if i >= 0 else None
                    flush = bench.flush if i >= 0 and bench.points[i].flush else None
                    print("ok\n" * len(lines), end="", flush=True)
                continue
            if flush is not None:
                flush()
            fn()
