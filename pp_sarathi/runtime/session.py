"""Stage processes that stay up and serve a series of jobs (the Python API's engine).

A one-shot run (launch.py) starts the stages, serves one workload and exits. A session starts
them once — each loads its layers and allocates its KV cache once — and then runs job after job:
the caller hands rank 0 the requests and every rank the job's sampling settings over a
``multiprocessing`` pipe, the ranks run the job exactly as a one-shot run does (same driver,
same stage loop, same timing), and each rank sends its part of the outcome back. Between jobs
the ranks wait on their pipes, not in a torch.distributed call, so idle time is unbounded and
no collective times out.

Failures never hang the caller: it waits on the pipes *and* on the processes' exit sentinels,
so a stage that dies (or reports an error) ends the session with :class:`StageFailure`.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from ..config import RunConfig, SamplingConfig
from ..metrics.records import RunOutcome
from ..model.arch import ModelArch
from ..model.tokenizer import Tokenizer
from ..workload.request import Request


class StageFailure(RuntimeError):
    """A stage process died or failed; the session is closed. The message names the stage."""


@dataclass
class SessionSpec:
    """What every stage process needs, sent once at start."""

    cfg: RunConfig
    model_path: Path
    arch: ModelArch
    layer_ranges: list[tuple[int, int]]
    tokenizer: Tokenizer | None = None


@dataclass
class Job:
    sampling: SamplingConfig
    requests: list[Request]  # rank 0 only; the other ranks get []


def _stage_main(rank: int, world: int, port: int, spec: SessionSpec, conn, cores: list[int] | None = None) -> None:
    """Body of one session stage process; ``cores``: the CPUs it binds its threads to."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    # Ctrl-C in a terminal reaches the whole process group: the caller decides (it closes the
    # session), rather than every stage dying mid-step with its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        state = _StageState(rank, world, spec, cores)
        conn.send(("ready", os.getpid()))
    except Exception as exc:
        conn.send(("error", f"stage {rank} failed to start: {exc}"))
        return
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the caller is gone
            break
        if job is None:
            break
        try:
            conn.send(("done", state.run(job)))
        except Exception as exc:
            detail = traceback.format_exc() if os.environ.get("PP_SARATHI_DEBUG") else ""
            conn.send(("error", f"stage {rank} failed: {exc}\n{detail}".rstrip()))
            break
    state.close()


class _StageState:
    """One rank's long-lived stage: executor, link and device, set up once."""

    def __init__(self, rank: int, world: int, spec: SessionSpec, cores: list[int] | None = None):
        import torch

        from ..model.loader import parse_dtype
        from .host import prepare_host
        from .launch import init_process_group
        from .ring_setup import connect_rings
        from .stage import build_executor, pick_device
        from .transport import StageLink

        cfg = spec.cfg
        self.rank, self.world, self.spec = rank, world, spec
        prepare_host(world, cfg.parallel, cores=cores)
        self.device = pick_device(cfg, rank)
        self.link = None
        if world > 1:
            init_process_group(cfg.parallel.backend, self.device, rank, world, cfg.parallel.timeout_s)
            import torch.distributed as dist
            comm = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            self.link = StageLink(rank, world, spec.arch.hidden_size, parse_dtype(cfg.model.dtype), comm, 0)
            connect_rings(self.link, cfg, spec.arch)
        self.executor = build_executor(cfg, spec.model_path, spec.arch, spec.layer_ranges[rank], self.device)

    def run(self, job: Job):
        """Rank 0: the job's RunOutcome; other ranks: their stage records and CPU report."""
        from ..metrics.timing import StageClock, StageTimeline
        from .cores import cpu_report
        from .sampler import Sampler

        if self.executor.is_last:
            self.executor.sampler = Sampler(job.sampling)
        clock = StageClock(self.device)
        if self.link is not None:
            import torch.distributed as dist

            from .launch import share_origin
            self.link.logprobs = job.sampling.logprobs  # the results' wire format follows the job
            dist.barrier()
            clock.reset()  # common origin, as a one-shot run: right after the barrier, then shared
            share_origin(clock)
        timeline = StageTimeline(clock, self.rank)
        if self.rank != 0:
            from .stage import serve_stage
            serve_stage(self.executor, self.link, timeline)
            return timeline.records(), cpu_report(clock)
        return self._drive(job, clock, timeline)

    def _drive(self, job: Job, clock, timeline) -> RunOutcome:
        from .driver import DriverLog, LocalPipeline, PipelineFront, drive
        from .cores import cpu_report
        from .launch import heartbeat_interval
        from .prepare import Prepared, new_scheduler

        spec = self.spec
        cfg = dataclasses.replace(spec.cfg, sampling=job.sampling)
        prep = Prepared(cfg, spec.model_path, spec.arch, job.requests, spec.layer_ranges, spec.tokenizer)
        scheduler = new_scheduler(prep)
        if self.link is None:
            pipeline = LocalPipeline(self.executor, clock)
            timeline = pipeline.timeline
        else:
            pipeline = PipelineFront(self.executor, self.link, timeline, heartbeat_interval(cfg.parallel.timeout_s))
        driver = DriverLog()
        t0 = time.perf_counter()
        try:
            drive(scheduler, pipeline, clock, None, driver, None)
        finally:
            if self.link is not None:
                pipeline.close(cfg.parallel.timeout_s)
        wall = time.perf_counter() - t0
        if self.link is not None:
            self.link.send_stop()
            self.link.flush()
        seqs = [scheduler.seqs[r.index] for r in job.requests]
        return RunOutcome(seqs, driver.batches, timeline.records(), self.world, wall, spec.layer_ranges,
                          str(self.device), driver_spans=driver.spans, stage_cpus={0: cpu_report(clock)})

    def close(self) -> None:
        if self.link is not None:
            import torch.distributed as dist
            self.link.close()
            try:
                dist.destroy_process_group()
            except Exception:
                pass


class StageSession:
    """``spec.cfg.parallel.pp`` stage processes, started once, serving :meth:`run` calls."""

    def __init__(self, spec: SessionSpec, start_timeout_s: float = 900.0):
        from .cores import child_binding, log_cores
        from .launch import free_port, local_core_plan

        self.world = spec.cfg.parallel.pp
        ctx = mp.get_context("spawn")
        port = free_port()
        plan = local_core_plan(spec.cfg, self.world) or [None] * self.world
        self._conns, self.procs = [], []
        for rank in range(self.world):
            parent, child = ctx.Pipe()
            # daemon: a caller that exits without close() still takes its stages with it.
            p = ctx.Process(target=_stage_main, args=(rank, self.world, port, spec, child, plan[rank]),
                            name=f"pp_sarathi-session-stage-{rank}", daemon=True)
            if plan[rank]:
                log_cores(rank, plan[rank])
            with child_binding(plan[rank]):  # the stage starts on its cores, before it loads torch
                p.start()
            child.close()
            self._conns.append(parent)
            self.procs.append(p)
        self.closed = False
        self.pids = [p.pid for p in self.procs]
        self._collect("start", start_timeout_s)

    def run(self, requests: list[Request], sampling: SamplingConfig) -> RunOutcome:
        """Serve ``requests`` (indices 0..n-1) on the running stages; raises StageFailure."""
        if self.closed:
            raise StageFailure("the stage processes are closed (closed by the caller or after a failure)")
        for rank, conn in enumerate(self._conns):
            self._send(rank, Job(sampling, requests if rank == 0 else []))
        try:
            replies = self._collect("run", None)
        except KeyboardInterrupt:  # the job is still running on the stages: they cannot be reused
            self.close(grace_s=0.0)
            raise
        outcome: RunOutcome = replies[0]
        for rank in range(1, self.world):
            records, cpus = replies[rank]
            outcome.stage_records.extend(records)
            outcome.stage_cpus[rank] = cpus
        return outcome

    def _send(self, rank: int, msg) -> None:
        try:
            self._conns[rank].send(msg)
        except (BrokenPipeError, OSError):
            self._fail(f"stage {rank} is gone ({self._exit_text(rank)})")

    def _collect(self, what: str, timeout_s: float | None) -> list:
        """One reply per rank; watches the processes so a dead stage fails instead of hanging."""
        replies: dict[int, object] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(replies) < self.world:
            pending = [r for r in range(self.world) if r not in replies]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([self._conns[r] for r in pending] + [self.procs[r].sentinel for r in pending], left)
            if not ready and deadline is not None:
                self._fail(f"stages did not {what} within {timeout_s:.0f} s")
            for r in pending:
                conn = self._conns[r]
                if conn.poll():
                    try:
                        kind, payload = conn.recv()
                    except (EOFError, OSError):
                        self._fail(f"stage {r} died during {what} ({self._exit_text(r)})")
                    if kind == "error":
                        # A stage's error is most often a peer that died: name the dead one first.
                        dead = [q for q in range(self.world) if q != r and not self.procs[q].is_alive()]
                        lead = "".join(f"stage {q} died ({self._exit_text(q)}); " for q in dead)
                        self._fail(lead + str(payload))
                    replies[r] = payload
                elif not self.procs[r].is_alive():
                    self._fail(f"stage {r} died during {what} ({self._exit_text(r)})")
        return [replies[r] for r in range(self.world)]

    def _exit_text(self, rank: int) -> str:
        p = self.procs[rank]
        p.join(0.5)
        code = p.exitcode
        if code is None:
            return "still running"
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    def _fail(self, message: str):
        self.close(grace_s=0.0)
        raise StageFailure(message)

    def close(self, grace_s: float = 10.0) -> None:
        """Stop every stage process (politely, then terminate, then kill); idempotent."""
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self._conns:
            conn.close()
