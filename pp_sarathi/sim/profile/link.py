"""The runtime's own transport and driver loop, timed between stage processes that really
compute: what a hop, a return to rank 0, a send and a receive cost (``link_*`` profile rows)."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ...config import RunConfig
from ...metrics.records import StageRecord
from ...metrics.timing import StageClock, StageTimeline
from ...model.arch import ModelArch
from ...model.loader import parse_dtype
from ...runtime.driver import PipelineFront, drive
from ...runtime.partition import layer_counts, layer_ranges
from ...runtime.cores import plan_cores
from ...runtime.host import prepare_host
from ...runtime.stage import serve_stage
from ...runtime.ring_setup import connect_rings
from ...runtime.transport import StageLink
from ...scheduler.batch import BatchPlan
from .bench import stage_executor
from .points import mixed_parts
from .workers import run_workers

LINK_SHAPES = [(0, 1), (0, 13), (60, 4), (128, 13), (0, 28), (512, 0)]  # (prefill chunk, decodes) per micro-batch


class LinkStage:
    """A real pipeline stage (random weights, the rank's own layers of the configured model) for
    :func:`measure_link`, so that the transport is timed next to the compute it really shares
    the host with. To see both ways a stage takes in its input, the first stage keeps its core
    busy for half a step longer on every third micro-batch (the next stage waits for it: ``hop``)
    and the last stage on another third (the data is already there when it asks: ``recv``)."""

    def __init__(self, cfg: RunConfig, arch, rank: int, world: int, blocks: int):
        start, end = layer_ranges(layer_counts(arch, world, cfg.parallel.partition))[rank]
        self.ex = stage_executor(cfg, arch, torch.device("cpu"), start, end, blocks)
        self.is_first, self.is_last, self.device = self.ex.is_first, self.ex.is_last, self.ex.device
        self.calls = 0
        self._spin = torch.randn(128, 128)

    def step(self, parts, hidden=None):
        t0 = time.perf_counter()
        out = self.ex.step(parts, hidden)
        self.calls += 1
        if (self.is_first and self.calls % 3 == 1) or (self.is_last and self.calls % 3 == 0):
            end = time.perf_counter() + 0.5 * (time.perf_counter() - t0)
            while time.perf_counter() < end:
                torch.mm(self._spin, self._spin)
        return out


class ScriptedPlans:
    """A scheduler that hands out ``n`` copies of one micro-batch."""

    def __init__(self, parts, n: int):
        self.parts, self.n, self.next, self.done = parts, n, 0, 0

    @property
    def has_unfinished(self) -> bool:
        return self.done < self.n

    def schedule(self, now: float):
        if self.next >= self.n:
            return None
        self.next += 1
        return BatchPlan(id=self.next - 1, parts=self.parts, scheduled_at=now)

    def on_batch_done(self, plan, results, now):
        self.done += 1
        return []

    def next_arrival(self):
        return None


def link_intervals(records, batches, world: int, skip: int = 3) -> dict[str, list[float]]:
    """Per micro-batch intervals of a pipeline run (real or :func:`measure_link`'s)."""
    R = {(r.stage, r.batch_id): r for r in records}
    done = {b.batch_id: b.done_at for b in batches}
    ids = sorted(done)[skip:]
    out: dict[str, list[float]] = {"send_first": [], "send_mid": [], "send_last": [], "recv": [], "hop": [], "ret": []}
    last = world - 1
    for k in ids:
        for s in range(world):
            r = R.get((s, k))
            if r is None:
                continue
            key = "send_first" if s == 0 else ("send_last" if s == last else "send_mid")
            out[key].append(r.send_end - r.compute_end)
            if s > 0:
                up = R[(s - 1, k)]
                if up.send_end <= r.recv_start:  # the data was sent before this stage asked for it
                    out["recv"].append(r.recv_end - r.recv_start)
                elif r.recv_start <= up.compute_end:  # this stage waited for the upstream compute
                    out["hop"].append(r.compute_start - up.compute_end)
        newest = R.get((0, k + world - 1))
        if newest is not None and newest.send_end <= R[(last, k)].compute_end:  # the driver waited in collect
            out["ret"].append(done[k] - R[(last, k)].compute_end)
    return out


def clock_offsets(clock, rank: int, world: int, pings: int = 8) -> list[float]:
    """On rank 0: how far each rank's clock is ahead of rank 0's (NTP-style: the ping with the
    shortest round trip, assuming symmetric halves); [] elsewhere. Every rank takes part."""
    out = [0.0] * world
    buf = torch.zeros(1, dtype=torch.float64)
    for peer in range(1, world):
        best = None
        for _ in range(pings):
            if rank == 0:
                t0 = clock.now()
                dist.send(buf, peer)
                dist.recv(buf, peer)
                t2 = clock.now()
                if best is None or t2 - t0 < best[0]:
                    best = (t2 - t0, float(buf[0]) - (t0 + t2) / 2)
            elif rank == peer:
                dist.recv(buf, 0)
                buf[0] = clock.now()
                dist.send(buf, 0)
        if rank == 0:
            out[peer] = best[1]
    return out


def _shifted(r: StageRecord, dt: float) -> StageRecord:
    """``r`` with every time moved by ``dt`` (onto rank 0's clock)."""
    return StageRecord(r.stage, r.batch_id, r.recv_start + dt, r.recv_end + dt, r.compute_start + dt,
                       r.compute_end + dt, r.send_start + dt, r.send_end + dt)


def link_worker(rank: int, a: dict) -> dict | None:
    """One rank of :func:`measure_link`; rank 0 returns the intervals per shape."""
    from ..fidelity import run_config_from_dict


    cfg = run_config_from_dict(a["cfg"])
    cores = a["cores"][rank] if a.get("cores") else None
    prepare_host(1, cfg.parallel, threads=1, cores=cores)
    world, bs = a["world"], cfg.cache.block_size
    arch = ModelArch.from_config(cfg.model)
    h, dtype = arch.hidden_size, parse_dtype(cfg.model.dtype)
    top = arch.max_position_embeddings
    shapes = [mixed_parts(c, 1, min(64, top - c) if c else 0, d, min(300, top), bs) for c, d in a["shapes"]]
    blocks = max(sum(-(-(p.start + p.num_tokens) // bs) for p in parts) for parts in shapes) + 4
    ex = LinkStage(cfg, arch, rank, world, blocks)
    dist.init_process_group("gloo", init_method=f"file://{a['init_file']}", rank=rank, world_size=world)
    result = {}
    try:
        for (c, d), parts in zip(a["shapes"], shapes):
            ex.calls = 0
            link = StageLink(rank, world, h, dtype, torch.device("cpu"))
            connect_rings(link, cfg, arch)  # as the runtime's links (parallel.transport)
            dist.barrier()
            clock = StageClock("cpu")
            offsets = clock_offsets(clock, rank, world)
            timeline = StageTimeline(clock, rank)
            if rank != 0:
                serve_stage(ex, link, timeline)
                link.close()
                dist.gather_object(timeline.records(), None, dst=0)
                continue
            pipe = PipelineFront(ex, link, timeline, heartbeat_s=1.0)
            batches = drive(ScriptedPlans(parts, a["batches"]), pipe, clock)
            pipe.close(60.0)
            link.send_stop()
            link.flush()
            link.close()
            gathered: list = [None] * world
            dist.gather_object(timeline.records(), gathered, dst=0)
            records = [_shifted(r, -offsets[r.stage]) for part in gathered for r in (part or [])]
            result[f"{c},{d}"] = link_intervals(records, batches, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None


def measure_link(cfg: RunConfig, shapes=LINK_SHAPES, batches: int = 36, timeout_s: float = 300.0) -> dict:
    """Run the runtime's own driver loop (``drive`` + ``PipelineFront``) and stage loop
    (``serve_stage``) with its transport (gloo, with the shared-memory ring as
    ``parallel.transport`` says) over ``parallel.pp`` local processes whose stages
    really compute (:class:`LinkStage`): {"chunk,decodes": {interval: [seconds]}} for each
    micro-batch shape, intervals as in :func:`link_intervals`."""
    world = max(2, cfg.parallel.pp)
    # Each rank on its own core where the runtime would bind its stages so (parallel.bind_cores):
    # a receive is timed as a run's stage sees it, not behind the other rank's compute on a
    # shared core.
    one_thread = dataclasses.replace(cfg.parallel, threads_per_stage=1)
    with tempfile.TemporaryDirectory() as d:
        arg = {"init_file": str(Path(d) / "pg"), "world": world, "cfg": dataclasses.asdict(cfg),
               "shapes": [list(x) for x in shapes], "batches": batches,
               "cores": plan_cores(one_thread, world, "cpu")}
        return run_workers("link-worker", world, arg, timeout_s)

