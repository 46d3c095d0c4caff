"""Start the stage processes of one run (one fresh process group per run) and watch them.

If a stage dies, the others get ``parallel.timeout_s`` to notice (a broken connection or a
receive timeout) and exit on their own, rank 0 writing what finished; then they are killed.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import time
import traceback
from typing import Callable

from ..metrics.records import RunOutcome
from .serve import Prepared


class PipelineFailure(RuntimeError):
    """A stage process failed; the message names the stage."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_entry(rank: int, world: int, port: int, prep: Prepared,
                 finalize: Callable[[RunOutcome], None] | None, on_finished_factory) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    run_stage_process(prep, rank, world, rank, world, finalize, on_finished_factory)


def run_stage_process(prep: Prepared, rank: int, world: int, local_rank: int, local_world: int,
                      finalize, on_finished_factory) -> int:
    """Body of one stage process (self-spawned, torchrun or deepspeed); exits non-zero on failure."""
    import torch.distributed as dist

    from .pipeline import init_process_group, run_rank
    from .pipeline_threads import prepare_host
    from .setup import pick_device

    cfg = prep.cfg
    prepare_host(local_world, cfg.parallel)
    try:
        init_process_group(cfg.parallel.backend, pick_device(cfg, local_rank), rank, world,
                           cfg.parallel.timeout_s)
        on_finished = on_finished_factory() if (rank == 0 and on_finished_factory) else None
        outcome = run_rank(prep, rank, world, local_rank, on_finished)
        if outcome is not None and finalize is not None:
            finalize(outcome)
        if outcome is not None and outcome.error:
            print(f"[pp_sarathi] stage 0: {outcome.error}", file=sys.stderr, flush=True)
            os._exit(1)
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
    procs = [ctx.Process(target=_stage_entry, args=(r, world, port, prep, finalize, on_finished_factory),
                         name=f"pp_sarathi-stage-{r}", daemon=False) for r in range(world)]
    for p in procs:
        p.start()
    failed: tuple[int, int] | None = None
    deadline = None
    try:
        while any(p.is_alive() for p in procs):
            for rank, p in enumerate(procs):
                if failed is None and p.exitcode not in (None, 0):
                    failed = (rank, p.exitcode)
                    deadline = time.monotonic() + prep.cfg.parallel.timeout_s + 5
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    if failed is None:
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        failed = bad[0] if bad else None
    if failed is not None:
        rank, code = failed
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise PipelineFailure(f"stage {rank} failed ({how})")
