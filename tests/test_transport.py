"""The stage link over a real gloo process group: messages arrive intact, and a long run of
sends does not keep every sent tensor alive; results with their token ids inline and beyond."""
from __future__ import annotations

import multiprocessing as mp
import os

import torch

from pp_sarathi.runtime.launch import free_port
from pp_sarathi.scheduler.batch import ScheduledPart

N = 300


def _rank(rank: int, port: int, q) -> None:
    import torch.distributed as dist

    from pp_sarathi.cost.messages import RESULT_INLINE_TOKENS
    from pp_sarathi.runtime.transport import StageLink
    from pp_sarathi.scheduler.batch import SampleResult

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    link = StageLink(rank, 2, 16, torch.float32, torch.device("cpu"))
    part = ScheduledPart(seq_index=3, start=5, token_ids=[0] * 4, block_table=[7, 8], is_prefill=True,
                         sample=True, output_index=0)
    held = 0
    for i in range(N):
        if rank == 0:
            link.send_activations(i, [part], torch.full((4, 16), float(i)))
            held = max(held, link.pending_sends)
        else:
            plan_id, parts, hidden = link.recv_activations()
            assert plan_id == i and parts[0].block_table == [7, 8] and float(hidden[0, 0]) == i
    link.flush()
    # Results back: inline in the fixed message, and beyond it (a second message), with logprobs.
    link.logprobs = 2
    for n in (3, RESULT_INLINE_TOKENS, RESULT_INLINE_TOKENS + 40):
        if rank == 1:
            link.send_results(n, [None if i % 5 == 4 else SampleResult(i, {i: -0.5, i + 1: -1.5, i + 2: -2.0})
                                  for i in range(n)])
        else:
            plan_id, results = link.recv_results(1)
            assert plan_id == n and len(results) == n
            for i, r in enumerate(results):
                assert (r is None) if i % 5 == 4 else (r.token_id == i and r.logprobs == {i: -0.5, i + 1: -1.5, i + 2: -2.0})
    link.flush()
    dist.barrier()
    q.put((rank, held))


def test_sends_complete_and_do_not_pile_up():
    from pp_sarathi.runtime.transport import MAX_PENDING_SENDS

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    held = dict(q.get(timeout=5) for _ in range(2))
    assert 0 < held[0] <= MAX_PENDING_SENDS < 3 * N
