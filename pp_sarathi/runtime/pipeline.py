"""The stages of a pipeline, one per rank: rank 0 drives (scheduler + stage 0), the others
receive, compute and pass on; the last stage samples and returns tokens to rank 0."""
from __future__ import annotations

import logging
import time
from collections import deque
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from ..metrics.records import StageRecord
from ..metrics.timing import StageClock
from ..model.loader import parse_dtype
from ..scheduler import BatchPlan, SampleResult
from .driver import drive
from .executor import StageExecutor
from ..metrics.records import RunOutcome
from .serve import Prepared, new_scheduler
from .setup import build_executor, pick_device
from .transport import StageLink
from .wire import STOP

log = logging.getLogger("pp_sarathi")


def choose_backend(cfg_backend: str, device: torch.device) -> str:
    if cfg_backend != "auto":
        return cfg_backend
    return "nccl" if device.type == "cuda" else "gloo"


class DriverPipeline:
    """Rank 0's view: compute stage 0 and send on; collect sampled tokens from the last rank."""

    def __init__(self, executor: StageExecutor, link: StageLink, clock: StageClock):
        self.executor, self.link, self.clock = executor, link, clock
        self.num_stages = link.world
        self.records: list[StageRecord] = []
        self._order: deque[int] = deque()

    def submit(self, plan: BatchPlan) -> None:
        start = self.clock.now()
        hidden = self.executor.step(plan.parts)
        end = self.clock.now()
        self.link.send_activations(plan.id, plan.parts, hidden)
        self.records.append(StageRecord(0, plan.id, start, start, start, end, end, self.clock.now()))
        self._order.append(plan.id)

    def collect(self) -> list[SampleResult | None]:
        plan_id, results = self.link.recv_results(self.link.world - 1)
        expected = self._order.popleft()
        if plan_id != expected:
            raise RuntimeError(f"pipeline returned batch {plan_id}, expected {expected}")
        return results


def worker_loop(executor: StageExecutor, link: StageLink, clock: StageClock) -> list[StageRecord]:
    """Stages 1..P-1: receive, compute, pass on until told to stop."""
    records = []
    while True:
        r0 = clock.now()
        plan_id, parts, hidden = link.recv_activations()
        if plan_id == STOP:
            if link.next is not None:
                link.send_stop()
            break
        r1 = clock.now()
        out = executor.step(parts, hidden)
        c1 = clock.now()
        if link.next is None:
            link.send_results(plan_id, out)
        else:
            link.send_activations(plan_id, parts, out)
        records.append(StageRecord(link.rank, plan_id, r0, r1, r1, c1, c1, clock.now()))
    link.flush()
    return records


def run_rank(prep: Prepared, rank: int, world: int, local_rank: int,
             on_finished: Callable | None = None) -> RunOutcome | None:
    """Run this rank's stage inside an initialised process group; rank 0 returns the outcome."""
    cfg = prep.cfg
    device = pick_device(cfg, local_rank)
    executor = build_executor(cfg, prep.model_path, prep.arch, prep.layer_ranges[rank], device)
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    link = StageLink(rank, world, prep.arch.hidden_size, parse_dtype(cfg.model.dtype), comm_device,
                     cfg.sampling.logprobs)
    dist.barrier()
    clock = StageClock(device)  # common origin: every rank resets right after the barrier
    if rank != 0:
        records = worker_loop(executor, link, clock)
        dist.gather_object(records, None, dst=0)
        return None
    scheduler = new_scheduler(prep)
    pipeline = DriverPipeline(executor, link, clock)
    t0 = time.perf_counter()
    error = None
    try:
        batches = drive(scheduler, pipeline, clock, on_finished)
    except Exception as exc:  # a stage died or timed out: keep what finished, end the rest
        error = f"pipeline failed: {exc}"
        scheduler.abort_all(error, clock.now())
        batches = []
    wall = time.perf_counter() - t0
    seqs = [scheduler.seqs[r.index] for r in prep.requests]
    records = list(pipeline.records)
    if error is None:
        link.send_stop()
        link.flush()
        gathered: list = [None] * world
        dist.gather_object(records, gathered, dst=0)
        records = [r for part in gathered for r in (part or [])]
    return RunOutcome(seqs, batches, records, world, wall, prep.layer_ranges, str(device), error)


def init_process_group(cfg_backend: str, device: torch.device, rank: int, world: int, timeout_s: float) -> str:
    backend = choose_backend(cfg_backend, device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return backend
