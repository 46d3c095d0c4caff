"""The shared-memory payload path of the stage link (runtime/shm_ring.py, ring_setup.py):
the ring on its own, the link over a real gloo process group (fallback to the gloo payload for
hops too big for a slot, the ring wrapping many times under a slow receiver, the segment's name
gone once both ends have it) and whole runs with the path on and off."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch

from conftest import run_pipeline
from pp_sarathi.config import RunConfig
from pp_sarathi.model.arch import ModelArch
from pp_sarathi.runtime.launch import free_port
from pp_sarathi.runtime.shm_ring import SHM_DIR, RingTimeout, ShmRing, shm_available
from pp_sarathi.scheduler.batch import ScheduledPart

pytestmark = pytest.mark.skipif(not shm_available(), reason="no writable /dev/shm")

H = 16


def _part(ntok: int, tag: int) -> ScheduledPart:
    return ScheduledPart(seq_index=tag, start=5, token_ids=[0] * ntok, block_table=[tag, tag + 1],
                         is_prefill=True, sample=True, output_index=0)


def test_ring_flow_control_and_layout_in_one_process():
    ring = ShmRing.create("test", slots=2, slot_bytes=1000)
    try:
        peer = ShmRing.attach(ring.name, ring.nonce, ring.slots, ring.slot_bytes)
        ring.unlink()
        assert not os.path.exists(os.path.join(SHM_DIR, ring.name))  # mapped memory outlives the name
        meta = torch.arange(10, dtype=torch.long)
        assert ring.fits(10, 4, H, 4) and not ring.fits(10, 100, H, 4)
        for seq in (0, 1):
            ring.wait_free(seq, 0.1)
            ring.write(seq, meta + seq, torch.full((4, H), float(seq)))
        start = time.monotonic()
        with pytest.raises(RingTimeout, match="has not taken hop 0"):
            ring.wait_free(2, 0.2)  # both slots hold unconsumed hops
        assert time.monotonic() - start < 2
        out = torch.empty(4, H)
        got = peer.read(0, 10, out)
        assert got.tolist() == list(range(10)) and float(out[3, 7]) == 0.0 and peer.consumed == 1
        ring.wait_free(2, 0.1)  # slot 0 is free again
        ring.write(2, meta + 2, torch.full((4, H), 2.0))
        assert peer.read(1, 10, out)[0] == 1 and float(out[0, 0]) == 1.0
        assert peer.read(2, 10, out)[0] == 2 and float(out[0, 0]) == 2.0
        peer.close()
    finally:
        ring.unlink()
        ring.close()


def test_attach_refuses_a_segment_that_is_not_the_offered_one():
    ring = ShmRing.create("test", slots=2, slot_bytes=256)
    try:
        with pytest.raises(ValueError):
            ShmRing.attach(ring.name, ring.nonce + 1, ring.slots, ring.slot_bytes)
        with pytest.raises(OSError):
            ShmRing.attach("pp_sarathi-no-such-segment", ring.nonce, ring.slots, ring.slot_bytes)
    finally:
        ring.unlink()
        ring.close()


def _link_cfg() -> tuple[RunConfig, ModelArch]:
    cfg = RunConfig()
    cfg.parallel.pp, cfg.parallel.transport, cfg.parallel.timeout_s = 2, "shm", 30.0
    cfg.scheduler.chunk_size, cfg.scheduler.max_batch_size = 4, 2  # a slot: 2 * 4 tokens, 1 part
    m = cfg.model
    m.hidden_size, m.num_heads, m.num_kv_heads, m.num_layers, m.max_position_embeddings = H, 2, 1, 2, 64
    return cfg, ModelArch.from_config(m)


# Tokens per hop: mostly hops that fit a slot, every 7th too big for one.
def _hops(n: int) -> list[int]:
    return [20 if i % 7 == 3 else 1 + i % 8 for i in range(n)]


def _link_rank(rank: int, port: int, q, n: int) -> None:
    import torch.distributed as dist

    from pp_sarathi.runtime.ring_setup import connect_rings, ring_slots
    from pp_sarathi.runtime.transport import StageLink

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg, arch = _link_cfg()
    link = StageLink(rank, 2, H, torch.float32, torch.device("cpu"))
    how = connect_rings(link, cfg, arch)
    ring = link.ring_out if rank == 0 else link.ring_in
    named = os.path.exists(os.path.join(SHM_DIR, ring.name))
    for i, ntok in enumerate(_hops(n)):
        if rank == 0:
            link.send_activations(i, [_part(ntok, i)], torch.arange(ntok * H, dtype=torch.float32).view(ntok, H) + i)
        else:
            if i < 2 * ring_slots(2):
                time.sleep(0.01)  # a slow receiver: the sender fills the ring and waits for slots
            plan_id, parts, hidden = link.recv_activations()
            want = torch.arange(ntok * H, dtype=torch.float32).view(ntok, H) + i
            assert plan_id == i and parts[0].block_table == [i, i + 1] and parts[0].num_tokens == ntok
            assert torch.equal(hidden, want), i
    link.send_stop() if rank == 0 else None
    if rank == 1:
        assert link.recv_activations()[0] == -1
    link.flush()
    dist.barrier()
    q.put((rank, how, named, link.describe(), ring.consumed))
    link.close()
    dist.destroy_process_group()


def test_link_over_gloo_with_ring_fallback_and_wraparound():
    from pp_sarathi.runtime.ring_setup import ring_slots

    n = 120
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_link_rank, args=(r, port, q, n)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    got = dict((r, rest) for r, *rest in (q.get(timeout=5) for _ in range(2)))
    how, named, hop, consumed = got[0]
    big = sum(1 for t in _hops(n) if t > 8)
    assert how.startswith("shm") and hop["path"] == "shm" and hop["slots"] == ring_slots(2)
    assert hop["wire_hops"] == big > 0 and hop["ring_hops"] == n - big > 10 * ring_slots(2)
    assert consumed == n - big  # every ring hop was taken out
    assert hop["ring_waits"] > 0, "the slow receiver should have made the sender wait for slots"
    assert not named and not got[1][1], "the segment's name must be gone once both ends mapped it"


# ---- whole runs ----------------------------------------------------------------------------
def _segments() -> set[str]:
    return {p.name for p in Path(SHM_DIR).glob("pp_sarathi-*")}


def _tiny_cfg(run_config, scheduler: str, transport: str) -> RunConfig:
    from pp_sarathi.api.config import read_preset

    cfg = run_config("unused", "unused", scheduler=scheduler, chunk_size=8)
    cfg.model.path = None
    for key, value in read_preset("model", "tiny").items():
        setattr(cfg.model, key, value)
    cfg.workload.name = "synthetic"
    cfg.workload.num_requests, cfg.workload.min_len, cfg.workload.max_len = 6, 12, 40
    cfg.workload.pd_ratio = 3
    cfg.parallel.transport = transport
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("pp, scheduler", [(2, "sarathi"), (3, "orca")])
def test_runs_with_and_without_shm_give_the_same_tokens(pp, scheduler, run_config, tmp_path):
    """Orca's whole prompts exceed a slot (2 * 8 tokens here): those hops take the gloo path."""
    from pp_sarathi.runtime.prepare import prepare

    prepare(_tiny_cfg(run_config, scheduler, "gloo"))  # writes the checkpoint before stages start
    before = _segments()
    outs = {}
    for transport in ("shm", "gloo"):
        (tmp_path / transport).mkdir()
        outs[transport] = run_pipeline(_tiny_cfg(run_config, scheduler, transport), pp, tmp_path / transport)
        assert outs[transport].error is None
    toks = {t: [s.output_token_ids for s in o.sequences] for t, o in outs.items()}
    assert toks["shm"] == toks["gloo"] and all(len(t) > 1 for t in toks["shm"])
    shm, gloo = outs["shm"].transport, outs["gloo"].transport
    batches = len(outs["shm"].batches)
    assert shm["mode"] == "shm" and [h["path"] for h in shm["hops"]] == ["shm"] * (pp - 1)
    assert all(h["ring_hops"] + h["wire_hops"] == batches and h["ring_hops"] > 0 for h in shm["hops"])
    if scheduler == "orca":
        assert all(h["wire_hops"] > 0 for h in shm["hops"])
    assert [h["path"] for h in gloo["hops"]] == ["wire"] * (pp - 1)
    assert all(h["wire_hops"] == batches for h in gloo["hops"])
    assert not (_segments() - before), "a run left a shared-memory segment behind"


def test_shm_with_nccl_is_refused():
    from pp_sarathi.config import ParallelConfig
    from pp_sarathi.runtime.prepare import check_devices

    with pytest.raises(ValueError, match="parallel.transport"):
        ParallelConfig(backend="nccl", transport="shm")
    cfg = RunConfig(device="cuda")  # backend auto on GPUs is NCCL
    cfg.parallel.transport = "shm"
    with pytest.raises(ValueError, match="parallel.transport=shm is a gloo path"):
        check_devices(cfg)
