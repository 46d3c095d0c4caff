"""Start the stage processes of one run (one fresh process group per run) and watch them.

If a stage dies, the others get ``parallel.timeout_s`` to notice (a broken connection or a
receive timeout) and exit on their own, rank 0 writing what finished; then they are killed.
SIGINT or SIGTERM (to the launcher or to the stages) stops a run gracefully: rank 0 schedules
nothing new, lets the in-flight micro-batches come back, ends the rest with a finish reason that
names the signal and writes everything; stages that hear nothing more exit on their own.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from ..metrics.records import RunOutcome
from ..metrics.timing import StageClock, StageTimeline
from ..model.loader import parse_dtype
from .driver import DriverLog, LocalPipeline, PipelineFront, StopRequest, drive
from .calibrate import run_predictor
from .cores import (child_binding, cpu_report, log_cores, plan_cores, restore_threads, stage_threads,
                    usable_cpus)
from .host import prepare_host
from .prepare import Prepared, new_scheduler
from .ring_setup import connect_rings
from .stage import build_executor, pick_device, serve_stage
from .transport import StageLink

log = logging.getLogger("pp_sarathi")

# How long a stage that was told to stop waits for the pipeline to wind down before exiting.
STOP_GRACE_S = 10.0


class PipelineFailure(RuntimeError):
    """A stage process failed; the message names the stage."""


class RunInterrupted(RuntimeError):
    """The run was stopped by SIGINT or SIGTERM (outputs and records so far are written)."""

    def __init__(self, signal_name: str):
        super().__init__(f"run stopped by {signal_name}")
        self.signal_name = signal_name


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_stop_handlers(rank: int) -> StopRequest:
    """SIGINT/SIGTERM end this stage's run gracefully instead of killing it mid-step.

    Rank 0 stops scheduling and winds the pipeline down; the other stages keep serving until
    rank 0's STOP arrives, and exit on their own if it has not come within STOP_GRACE_S."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        return stop

    def handler(signum, frame):
        if stop.reason is None:
            stop.reason = signal.Signals(signum).name
            if rank != 0:
                threading.Thread(target=_exit_after, args=(STOP_GRACE_S, rank, stop.reason),
                                 daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


def _exit_after(seconds: float, rank: int, reason: str) -> None:
    time.sleep(seconds)
    print(f"[pp_sarathi] stage {rank}: no STOP from rank 0 {seconds:.0f}s after {reason}; exiting",
          file=sys.stderr, flush=True)
    os._exit(128 + getattr(signal, reason).value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_entry(rank: int, world: int, port: int, prep: Prepared,
                 finalize: Callable[[RunOutcome], None] | None, on_finished_factory,
                 cores: list[int] | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    run_stage_process(prep, rank, world, rank, world, finalize, on_finished_factory, cores)


def local_core_plan(cfg, local_stages: int) -> list[list[int]] | None:
    """The cores of each of this host's ``local_stages`` stages (``parallel.bind_cores``; None:
    the threads float, said once when ``auto`` leaves a CPU run unbound)."""
    device = pick_device(cfg).type
    plan = plan_cores(cfg.parallel, local_stages, device)
    if plan is None and cfg.parallel.bind_cores == "auto" and device == "cpu":
        cpus = len(usable_cpus())
        log.info("stage threads not bound to cores: %d local stages x %d threads exceed the %d usable "
                 "CPUs (parallel.bind_cores=auto); stages that share a core count their waits for it as "
                 "compute (results.json stages[].cpu_user_s tells them apart)", local_stages,
                 stage_threads(local_stages, cfg.parallel.threads_per_stage, cpus), cpus)
    return plan


def run_stage_process(prep: Prepared, rank: int, world: int, local_rank: int, local_world: int,
                      finalize, on_finished_factory, cores: list[int] | None = None) -> int:
    """Body of one stage process (self-spawned, torchrun or deepspeed); exits non-zero on failure.
    ``cores``: the CPUs this stage binds its threads to (None: they float)."""
    cfg = prep.cfg
    prepare_host(local_world, cfg.parallel, cores=cores)
    stop = install_stop_handlers(rank)
    try:
        init_process_group(cfg.parallel.backend, pick_device(cfg, local_rank), rank, world,
                           cfg.parallel.timeout_s)
        on_finished = on_finished_factory() if (rank == 0 and on_finished_factory) else None
        outcome = run_rank(prep, rank, world, local_rank, on_finished, stop)
        if outcome is not None and finalize is not None:
            finalize(outcome)
        if outcome is not None and outcome.error:
            print(f"[pp_sarathi] stage 0: {outcome.error}", file=sys.stderr, flush=True)
            os._exit(1)
        if stop.reason is not None:
            print(f"[pp_sarathi] stage {rank}: stopped by {stop.reason}", file=sys.stderr, flush=True)
            os._exit(128 + getattr(signal, stop.reason).value)
    except Exception as exc:
        print(f"[pp_sarathi] stage {rank} failed: {exc}", file=sys.stderr, flush=True)
        if os.environ.get("PP_SARATHI_DEBUG"):
            traceback.print_exc()
        os._exit(1)
    try:
        dist.destroy_process_group()
    except Exception:
        pass
    return 0


def launch(prep: Prepared, finalize: Callable[[RunOutcome], None] | None = None,
           on_finished_factory=None) -> None:
    """Run ``parallel.pp`` stage processes on this machine; raise PipelineFailure if one fails."""
    world = prep.cfg.parallel.pp
    port = free_port()
    ctx = mp.get_context("spawn")
    plan = local_core_plan(prep.cfg, world) or [None] * world
    procs = [ctx.Process(target=_stage_entry, args=(r, world, port, prep, finalize, on_finished_factory, plan[r]),
                         name=f"pp_sarathi-stage-{r}", daemon=False) for r in range(world)]
    for r, p in enumerate(procs):
        if plan[r]:
            log_cores(r, plan[r])
        with child_binding(plan[r]):  # the stage starts on its cores, before it loads torch
            p.start()
    failed: tuple[int, int] | None = None
    deadline = None
    interrupted = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while any(p.is_alive() for p in procs):
            for rank, p in enumerate(procs):
                if failed is None and p.exitcode not in (None, 0):
                    failed = (rank, p.exitcode)
                    deadline = time.monotonic() + prep.cfg.parallel.timeout_s + 5
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
    except KeyboardInterrupt as exc:
        # Pass the signal on (a Ctrl-C at a terminal has reached the stages already, as they
        # share our process group, and they take the second one as the first; a SIGINT or
        # SIGTERM sent to this process alone has not), then give them the time a graceful stop
        # needs.
        interrupted = str(exc) or "SIGINT"
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.Signals.__members__.get(interrupted, signal.SIGINT))
        end = time.monotonic() + STOP_GRACE_S + 5
        while any(p.is_alive() for p in procs) and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    if interrupted is None:
        # The stages were signalled but not this process (its SIGINT ignored, as in a
        # background job, or a signal sent to the stages alone): they say so by their exit codes.
        codes = {p.exitcode for p in procs} - {0}
        stops = {128 + s.value: s.name for s in (signal.SIGINT, signal.SIGTERM)}
        if codes and codes <= set(stops):
            interrupted = stops[min(codes)]
    if interrupted is not None:
        raise RunInterrupted(interrupted)
    if failed is None:
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        failed = bad[0] if bad else None
    if failed is not None:
        rank, code = failed
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise PipelineFailure(f"stage {rank} failed ({how})")


def choose_backend(cfg_backend: str, device: torch.device) -> str:
    if cfg_backend != "auto":
        return cfg_backend
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(cfg_backend: str, device: torch.device, rank: int, world: int, timeout_s: float) -> str:
    backend = choose_backend(cfg_backend, device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return backend


def heartbeat_interval(timeout_s: float) -> float:
    """Often enough that an idle stage's receive never reaches ``timeout_s``."""
    return max(0.05, min(2.0, timeout_s / 4))


def share_origin(clock: StageClock) -> None:
    """Give every rank on rank 0's host rank 0's clock origin (ranks on other hosts keep their
    own, reset right after the barrier: aligned to within the barrier's exit skew)."""
    mine = [socket.gethostname(), clock.origin]
    dist.broadcast_object_list(mine, src=0)
    if mine[0] == socket.gethostname():
        clock.adopt_origin(mine[1])


def run_rank(prep: Prepared, rank: int, world: int, local_rank: int,
             on_finished: Callable | None = None, stop: StopRequest | None = None) -> RunOutcome | None:
    """Run this rank's stage inside an initialised process group; rank 0 returns the outcome."""
    cfg = prep.cfg
    device = pick_device(cfg, local_rank)
    executor = build_executor(cfg, prep.model_path, prep.arch, prep.layer_ranges[rank], device)
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    link = StageLink(rank, world, prep.arch.hidden_size, parse_dtype(cfg.model.dtype), comm_device,
                     cfg.sampling.logprobs)
    how = connect_rings(link, cfg, prep.arch)
    if rank == 0:
        log.info("activations between stages: %s", how)
    dist.barrier()
    clock = StageClock(device)
    share_origin(clock)
    timeline = StageTimeline(clock, rank)
    if rank != 0:
        serve_stage(executor, link, timeline)
        hop = link.describe()
        link.close()
        dist.gather_object((timeline.records(), cpu_report(clock), hop), None, dst=0)
        return None
    predictor = run_predictor(cfg, prep.model_path, prep.arch, executor, prep.layer_ranges)
    scheduler = new_scheduler(prep, predictor)
    front = PipelineFront(executor, link, timeline, heartbeat_interval(cfg.parallel.timeout_s), predictor.observe)
    driver = DriverLog()
    t0 = time.perf_counter()
    error = None
    try:
        drive(scheduler, front, clock, on_finished, driver, stop)
    except Exception as exc:  # a stage died or timed out: keep what finished, end the rest
        error = f"pipeline failed: {exc}"
        scheduler.abort_all(error, clock.now())
    wall = time.perf_counter() - t0
    front.close(cfg.parallel.timeout_s)
    seqs = [scheduler.seqs[r.index] for r in prep.requests]
    records = timeline.records()
    cpus = {0: cpu_report(clock)}
    if error is None:
        link.send_stop()
        link.flush()
        hop = link.describe()
        link.close()
        gathered: list = [None] * world
        dist.gather_object((records, cpus[0], hop), gathered, dst=0)
        records = [r for part in gathered for r in (part[0] if part else [])]
        cpus = {r: part[1] for r, part in enumerate(gathered) if part}
        hops = [part[2] for part in gathered if part and part[2] is not None]
    else:
        hops = [link.describe()]
    return RunOutcome(seqs, driver.batches, records, world, wall, prep.layer_ranges, str(device), error,
                      driver_spans=driver.spans, predictor=predictor_info(predictor), stage_cpus=cpus,
                      transport={"mode": str(cfg.parallel.transport), "hops": hops})


def predictor_info(predictor) -> dict:
    """results.json's ``predictor`` section (less the error, which metrics adds)."""
    return {"source": predictor.cost.describe().get("source"), "cost_model": predictor.cost.describe(),
            "online_scale": predictor.scale, "observations": predictor.observations, "refits": predictor.refits}


def serve_local(prep: Prepared, on_finished=None, stop: StopRequest | None = None) -> RunOutcome:
    """pp=1: the whole model in this process."""
    cfg = prep.cfg
    device = pick_device(cfg)
    plan = local_core_plan(cfg, 1)
    if plan:
        log_cores(0, plan[0])
    # This process outlives the run (compare, tests, the caller's own code): its threads get
    # their CPU masks back afterwards.
    previous = prepare_host(1, cfg.parallel, cores=plan[0] if plan else None)
    try:
        executor = build_executor(cfg, prep.model_path, prep.arch, (0, prep.arch.num_layers), device)
        predictor = run_predictor(cfg, prep.model_path, prep.arch, executor, prep.layer_ranges)
        scheduler = new_scheduler(prep, predictor)
        clock = StageClock(device)
        pipeline = LocalPipeline(executor, clock, predictor.observe)
        driver = DriverLog()
        t0 = time.perf_counter()
        drive(scheduler, pipeline, clock, on_finished, driver, stop)
        wall = time.perf_counter() - t0
        cpus = {0: cpu_report(clock)}
    finally:
        if previous is not None:
            restore_threads(previous)
    seqs = [scheduler.seqs[r.index] for r in prep.requests]
    return RunOutcome(seqs, driver.batches, pipeline.timeline.records(), 1, wall, prep.layer_ranges,
                      str(device), driver_spans=driver.spans, predictor=predictor_info(predictor),
                      stage_cpus=cpus)
