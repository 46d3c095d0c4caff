"""Batch shapes of the five scheduling policies, and a fake pipeline loop that drives each one to
completion over a paged "KV cache" of token ids (pure Python, no model, no torch.distributed).

The fake model's next token is a hash of every earlier token *read back from the KV slots the
plan's block table names*, so a lost, stale or overwritten KV entry changes the output: equal
outputs across policies (and equal to unbatched generation) mean scheduling was lossless.
"""
from __future__ import annotations

import math
import zlib
from collections import deque

import pytest

from pp_sarathi.config import SchedulerConfig
from pp_sarathi.scheduler import BlockManager, SampleResult, SeqStatus, make_scheduler
from pp_sarathi.workload.request import Request

POLICIES = ["orca", "vllm", "ft", "sarathi", "sarathi_serve"]
VOCAB = 64
EOS = 0


def make(policy, *, chunk=16, batch=8, tile=1, pp=1, num_blocks=4096, block_size=4, max_len=512,
         eos=(EOS,), ignore_eos=False):
    cfg = SchedulerConfig(name=policy, chunk_size=chunk, max_batch_size=batch, tile_size=tile)
    return make_scheduler(cfg, BlockManager(num_blocks, block_size), max_len, pp, eos, ignore_eos)


def req(i, prompt_len, max_tokens, arrival=0.0, seed=0):
    # Prompt ids in [1, VOCAB): never the EOS id 0.
    prompt = [1 + (7 * i + 13 * k + seed) % (VOCAB - 1) for k in range(prompt_len)]
    return Request(id=f"r{i}", prompt_token_ids=prompt, max_tokens=max_tokens, arrival_time=arrival, index=i)


def dummy(plan, token=5):
    return [SampleResult(token) if p.sample else None for p in plan.parts]


def parts_of(plan):
    """(request index, start, num_tokens, is_prefill) per part, in plan order."""
    return [(p.seq_index, p.start, p.num_tokens, p.is_prefill) for p in plan.parts]


def fake_model(tokens) -> int:
    return zlib.crc32(repr(list(tokens)).encode()) % VOCAB


def reference(r: Request, max_len: int, eos: tuple[int, ...]) -> list[int]:
    toks, out = list(r.prompt_token_ids), []
    while len(out) < r.max_tokens and len(toks) < max_len:
        t = fake_model(toks)
        out.append(t)
        toks.append(t)
        if t in eos:
            break
    return out


class FakePipeline:
    """Up to ``pp`` micro-batches in flight, completed in FIFO order (like runtime/driver.py).

    A plan is "computed" when submitted (stages run micro-batches in order): its tokens are
    written into KV slots block_table[pos // bs] * bs + pos % bs, and a sampling part reads its
    whole context back from the slots. Checks the scheduler's invariants on every plan.
    """

    def __init__(self, sched, pp, check=None):
        self.s, self.pp, self.check = sched, pp, check
        self.kv: dict[int, int] = {}
        self.inflight: deque = deque()
        self.plans = []  # (plan, snapshot taken right before schedule())
        self.now = 0.0
        self.max_running = 0
        self.recomputes = 0  # parts that restart a preempted request at position 0
        self.overlaps = 0  # parts planned while the same request's earlier chunk was in flight

    def _slot(self, table, pos):
        bs = self.s.blocks.block_size
        return table[pos // bs] * bs + pos % bs

    def _compute(self, plan):
        res = []
        for p in plan.parts:
            for k, t in enumerate(p.token_ids):
                self.kv[self._slot(p.block_table, p.start + k)] = t
            if p.sample:
                ctx = [self.kv[self._slot(p.block_table, q)] for q in range(p.start + p.num_tokens)]
                res.append(SampleResult(fake_model(ctx)))
            else:
                res.append(None)
        return res

    def _invariants(self, plan):
        s = self.s
        ids = [p.seq_index for p in plan.parts]
        assert len(ids) == len(set(ids)), "a request twice in one micro-batch"
        if len(ids) > s.per_batch_cap:  # a policy's top-up part beyond the cap
            assert len(ids) <= s.per_batch_cap + s.parts_past_cap, ids
            assert plan.parts[-2].is_prefill and plan.parts[-2].sample and plan.parts[-1].is_prefill
        # A request's earlier part may still be in flight only where the policy lets a prompt's
        # next chunk follow its earlier one, and never after a sampled part.
        ends = {}
        for q, _ in self.inflight:
            for p in q.parts:
                if p.seq_index in ids:
                    assert s.chunks_in_flight and not p.sample, "a request in two in-flight micro-batches"
                    ends[p.seq_index] = p.start + p.num_tokens
        self.overlaps += len(ends)
        for p in plan.parts:
            seq = s.seqs[p.seq_index]
            assert seq.status is SeqStatus.RUNNING
            assert p.start == ends.get(p.seq_index, seq.num_computed), \
                "a part must start where the request's computed or in-flight tokens end"
            assert seq.num_scheduled == p.start + p.num_tokens
            assert p.num_tokens >= 1
            assert len(p.block_table) >= s.blocks.blocks_for(p.start + p.num_tokens)
            assert p.sample == (p.start + p.num_tokens == seq.num_tokens)
            assert p.is_prefill == (p.num_tokens > 1 or not seq.output_token_ids)
        owned = [b for q in s.seqs.values() for b in q.block_table]
        assert len(owned) == len(set(owned)), "a KV block owned twice"
        assert not set(owned) & set(s.blocks._free)
        assert len(owned) + s.blocks.num_free == s.blocks.num_blocks, "KV blocks leaked"
        assert len(s.running) <= s.cfg.max_batch_size
        self.max_running = max(self.max_running, len(s.running))

    def run(self, max_steps=100_000):
        s = self.s
        for _ in range(max_steps):
            if not s.has_unfinished:
                break
            while len(self.inflight) < self.pp:
                snap = {"decodes": [q.index for q in s.schedulable_decodes()],
                        "prompt_pending": bool(s.waiting or s.schedulable_prefills() or any(
                            q.arrival_time <= self.now for q in s.pending))}
                plan = s.schedule(self.now)
                if plan is None:
                    break
                self._invariants(plan)
                if self.check:
                    self.check(s, plan, snap)
                self.plans.append((plan, snap))
                self.recomputes += sum(1 for p in plan.parts if p.start == 0 and s.seqs[p.seq_index].num_preemptions)
                self.inflight.append((plan, self._compute(plan)))
            if not self.inflight:
                nxt = s.next_arrival()
                assert nxt is not None, "unfinished requests but nothing schedulable: stuck"
                self.now = max(self.now, nxt)
                continue
            plan, res = self.inflight.popleft()
            self.now += 1.0
            s.on_batch_done(plan, res, self.now)
            for q in s.seqs.values():
                if q.status is SeqStatus.WAITING:  # preempted: recompute from scratch
                    assert q.num_computed == 0 and q.block_table == [] and not q.in_flight
        else:
            pytest.fail("the fake loop did not finish (livelock?)")
        assert s.blocks.num_free == s.blocks.num_blocks, "KV blocks not freed at the end"
        return self

    def outputs(self):
        return [(q.finish_reason, q.output_token_ids) for _, q in sorted(self.s.seqs.items())]


def run_all(sched, requests, pp=1, check=None):
    sched.add_requests(requests)
    return FakePipeline(sched, pp, check).run()


def mixed_workload(n=10, seed=0):
    """Varied prompt lengths (1..70), outputs (1..25) and arrivals."""
    out = []
    for i in range(n):
        h = zlib.crc32(f"{seed}-{i}".encode())
        out.append(req(i, 1 + h % 70, 1 + (h >> 8) % 25, arrival=float((h >> 16) % 3) * (i % 2), seed=seed))
    return out


# ---------------------------------------------------------------------------------------------
# sarathi: decode-maximal batching
# ---------------------------------------------------------------------------------------------

def sarathi_check(s, plan, snap):
    """Every schedulable decode plus ONE prefill chunk filling the budget (tile-rounded)."""
    budget, tile = s.cfg.chunk_size, s.cfg.tile_size
    decodes = [p for p in plan.parts if not p.is_prefill]
    prefills = [p for p in plan.parts if p.is_prefill]
    assert [p.seq_index for p in decodes] == snap["decodes"][:budget], "every schedulable decode"
    assert plan.parts[: len(decodes)] == decodes, "decodes come first"
    assert len(prefills) <= 1, "at most one prefill chunk"
    assert plan.num_tokens <= budget
    d = len(decodes)
    if not prefills:
        assert d >= budget or d >= s.per_batch_cap or not snap["prompt_pending"], \
            "a pending prompt must get a chunk"
        return
    p = prefills[0]
    if p.sample:  # the prompt's last chunk: whatever was left, never more than budget - decodes
        assert p.num_tokens <= budget - d
        return
    expect = budget - d  # the paper's rule
    if tile > 1 and (budget // tile) * tile > d:
        expect = (budget // tile) * tile - d  # chunk + decodes rounded down to a tile multiple
        assert (p.num_tokens + d) % tile == 0
    assert p.num_tokens == expect, (p.num_tokens, expect, d)


@pytest.mark.parametrize("budget,tile", [(16, 1), (256, 128), (300, 128)])
def test_sarathi_one_chunk_fills_the_budget(budget, tile):
    s = make("sarathi", chunk=budget, tile=tile, batch=64)
    reqs = [req(i, 40 + 137 * i % 400, 30 + i, arrival=float(i)) for i in range(10)]
    fp = run_all(s, reqs, check=sarathi_check)
    hybrid = [p for p, _ in fp.plans if p.kind == "hybrid"]
    assert len(hybrid) > 5, "the workload should exercise hybrid batches"
    if tile > 1:
        full = [p for p in hybrid if not any(q.is_prefill and q.sample for q in p.parts)]
        assert full and all(p.num_tokens % tile == 0 for p in full)


def test_sarathi_chunk_is_budget_minus_decodes_and_last_chunk_whole():
    s = make("sarathi", chunk=256, tile=128)
    s.add_requests([req(0, 10, 100), req(1, 456, 10)])
    p1 = s.schedule(0.0)
    assert parts_of(p1) == [(0, 0, 10, True)]  # one prompt only, whole (its last chunk)
    s.on_batch_done(p1, dummy(p1), 1.0)
    p2 = s.schedule(1.0)
    assert parts_of(p2) == [(0, 10, 1, False), (1, 0, 255, True)]  # 1 + 255 = 256
    s.on_batch_done(p2, dummy(p2), 2.0)
    p3 = s.schedule(2.0)
    # The last 201 prompt tokens fit the 255-token chunk: taken whole, not split 127 + 74.
    assert parts_of(p3) == [(0, 11, 1, False), (1, 255, 201, True)]
    assert p3.parts[1].sample


def test_sarathi_tile_rounds_down_with_an_odd_budget():
    s = make("sarathi", chunk=300, tile=128, max_len=2048)
    s.add_requests([req(0, 5, 50), req(1, 5, 50), req(2, 5, 50), req(3, 1000, 5)])
    for t in range(3):  # three short prompts, one per batch (ONE chunk per batch)
        p = s.schedule(float(t))
        assert len(p.parts) == 1 + t and p.num_prefill_tokens == 5
        s.on_batch_done(p, dummy(p), t + 0.5)
    p = s.schedule(3.0)
    assert p.num_decode_tokens == 3 and p.num_prefill_tokens == 253  # 256 - 3, not 300 - 3


def test_sarathi_takes_no_prefill_when_decodes_fill_the_budget():
    s = make("sarathi", chunk=4, batch=16)
    s.add_requests([req(i, 1, 50) for i in range(6)])
    for t in range(4):
        p = s.schedule(float(t))
        s.on_batch_done(p, dummy(p), t + 0.5)
    p = s.schedule(10.0)
    assert p.kind == "decode" and p.num_tokens == 4


# ---------------------------------------------------------------------------------------------
# orca, vllm, ft, sarathi_serve
# ---------------------------------------------------------------------------------------------

def test_orca_whole_prompts_no_cap_and_full_kv_reservation():
    s = make("orca", chunk=4, block_size=4)
    s.add_requests([req(0, 50, 10), req(1, 30, 7), req(2, 9, 3, arrival=0.5)])
    p1 = s.schedule(0.0)
    assert parts_of(p1) == [(0, 0, 50, True), (1, 0, 30, True)]  # 80 tokens, budget 4 ignored
    assert len(s.seqs[0].block_table) == s.blocks.blocks_for(60)  # prompt + max_tokens
    assert len(s.seqs[1].block_table) == s.blocks.blocks_for(37)
    s.on_batch_done(p1, dummy(p1), 1.0)
    p2 = s.schedule(1.0)
    assert parts_of(p2) == [(0, 50, 1, False), (1, 30, 1, False), (2, 0, 9, True)]
    assert len(s.seqs[2].block_table) == s.blocks.blocks_for(12)
    blocks = [list(s.seqs[i].block_table) for i in range(3)]
    for t in range(2, 8):  # decoding never grows a reservation
        s.on_batch_done(p2, dummy(p2), float(t))
        p2 = s.schedule(float(t))
        for i in range(3):
            if not s.seqs[i].is_finished:
                assert s.seqs[i].block_table == blocks[i]


def test_orca_does_not_admit_what_it_cannot_reserve():
    s = make("orca", num_blocks=10, block_size=4)  # 40 tokens of KV
    s.add_requests([req(0, 10, 20), req(1, 10, 20)])  # 30 tokens each
    p = s.schedule(0.0)
    assert [q.seq_index for q in p.parts] == [0]
    assert s.seqs[1].status is SeqStatus.WAITING


def vllm_check(s, plan, snap):
    assert plan.kind in ("prefill", "decode"), "vllm never mixes prefill and decode"
    if plan.kind == "prefill":
        assert plan.num_tokens <= s.cfg.chunk_size or len(plan.parts) == 1
        assert all(p.sample for p in plan.parts), "whole prompts"
    else:
        assert [p.seq_index for p in plan.parts] == snap["decodes"][: s.per_batch_cap]


def test_vllm_prefill_only_under_budget_else_decode_only():
    s = make("vllm", chunk=32)
    s.add_requests([req(0, 10, 4), req(1, 10, 4), req(2, 10, 4), req(3, 100, 4), req(4, 5, 4)])
    plans = []
    for t in range(4):
        p = s.schedule(float(t))
        plans.append(p)
        s.on_batch_done(p, dummy(p), t + 0.5)
    assert [parts_of(p) for p in plans[:3]] == [
        [(0, 0, 10, True), (1, 0, 10, True), (2, 0, 10, True)],  # 30 <= 32; 30 + 100 is not
        [(3, 0, 100, True)],  # over-long prompt runs alone, ahead of any decode
        [(4, 0, 5, True)],
    ]
    assert plans[3].kind == "decode" and len(plans[3].parts) == 5


def test_vllm_batch_shapes_on_a_mixed_workload():
    run_all(make("vllm", chunk=24, batch=6), mixed_workload(12), pp=2, check=vllm_check)


def test_ft_admits_nothing_until_the_batch_drains():
    s = make("ft", batch=8)
    reqs = [req(0, 6, 5), req(1, 9, 3), req(2, 4, 2, arrival=0.5), req(3, 4, 2, arrival=0.7)]

    def check(s, plan, snap):
        kinds = {p.is_prefill for p in plan.parts}
        assert len(kinds) == 1, "ft prefills the whole batch before it decodes"

    fp = run_all(s, reqs, check=check)
    first = {i: min(k for k, (p, _) in enumerate(fp.plans) if i in {q.seq_index for q in p.parts})
             for i in range(4)}
    last_old = max(k for k, (p, _) in enumerate(fp.plans) if {0, 1} & {q.seq_index for q in p.parts})
    assert first[0] == first[1] == 0
    assert first[2] == first[3] == last_old + 1, "new prompts wait for the running batch to drain"
    assert s.seqs[2].first_scheduled_time >= max(s.seqs[0].finish_time, s.seqs[1].finish_time)


def test_sarathi_serve_orders_decodes_partials_new_under_budget():
    s = make("sarathi_serve", chunk=16)
    s.add_requests([req(0, 4, 50), req(1, 40, 50), req(2, 6, 50, arrival=1.5)])
    p1 = s.schedule(0.0)
    assert parts_of(p1) == [(0, 0, 4, True), (1, 0, 12, True)]  # several chunks, 16 tokens
    s.on_batch_done(p1, dummy(p1), 1.0)
    p2 = s.schedule(1.0)
    assert parts_of(p2) == [(0, 4, 1, False), (1, 12, 15, True)]
    s.on_batch_done(p2, dummy(p2), 2.0)
    p3 = s.schedule(2.0)
    assert parts_of(p3) == [(0, 5, 1, False), (1, 27, 13, True), (2, 0, 2, True)]


def test_sarathi_serve_budget_on_a_mixed_workload():
    def check(s, plan, snap):
        assert plan.num_tokens <= s.cfg.chunk_size
        kinds = ["d" if not p.is_prefill else ("p" if p.start > 0 else "n") for p in plan.parts]
        assert kinds == sorted(kinds, key="dpn".index), kinds
        assert [p.seq_index for p in plan.parts if not p.is_prefill] == snap["decodes"][: s.per_batch_cap]

    run_all(make("sarathi_serve", chunk=20, batch=6), mixed_workload(12, seed=3), pp=2, check=check)


# ---------------------------------------------------------------------------------------------
# pipeline parallelism: several micro-batches in flight
# ---------------------------------------------------------------------------------------------

def test_inflight_requests_are_not_rescheduled_and_batch_size_is_shared():
    s = make("orca", batch=4, pp=2)
    assert s.per_batch_cap == 2
    s.add_requests([req(i, 3, 10) for i in range(6)])
    p1 = s.schedule(0.0)
    p2 = s.schedule(0.0)
    a, b = {p.seq_index for p in p1.parts}, {p.seq_index for p in p2.parts}
    assert a == {0, 1} and b == {2, 3}
    assert s.schedule(0.0) is None  # 4 = max_batch_size admitted, all in flight
    s.on_batch_done(p1, dummy(p1), 1.0)
    p3 = s.schedule(1.0)
    assert {p.seq_index for p in p3.parts} == a and p3.kind == "decode"  # no 5th request
    assert s.schedule(1.0) is None


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("batch,pp", [(5, 2), (6, 3), (3, 4)])
def test_per_micro_batch_cap(policy, batch, pp):
    s = make(policy, batch=batch, pp=pp, chunk=64)
    fp = run_all(s, mixed_workload(14, seed=pp), pp=pp)
    assert s.per_batch_cap == math.ceil(batch / pp)
    assert max(len(p.parts) for p, _ in fp.plans) <= s.per_batch_cap
    assert fp.max_running <= batch


# ---------------------------------------------------------------------------------------------
# memory pressure and preemption
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("pp", [1, 2, 3])
def test_tiny_kv_cache_still_finishes_every_request(policy, pp):
    # 12 blocks of 4 = 48 tokens; each request needs up to 40: at most one runs at a time.
    s = make(policy, num_blocks=12, block_size=4, batch=8, chunk=8, pp=pp, ignore_eos=True)
    reqs = [req(i, 15 + 2 * i, 20 - i) for i in range(6)]
    fp = run_all(s, reqs, pp=pp)
    assert [q.finish_reason for _, q in sorted(s.seqs.items())] == ["length"] * 6
    assert [q.output_token_ids for _, q in sorted(s.seqs.items())] == [reference(r, 512, ()) for r in reqs]
    if policy in ("vllm", "sarathi", "sarathi_serve"):
        assert sum(q.num_preemptions for q in s.seqs.values()) > 0  # this setting forces some
        assert fp.recomputes > 0


def test_preempted_request_recomputes_prompt_and_outputs():
    s = make("sarathi", num_blocks=6, block_size=4, chunk=32, ignore_eos=True)  # 24 tokens of KV
    s.add_requests([req(0, 6, 10), req(1, 6, 10)])
    p = s.schedule(0.0)
    s.on_batch_done(p, dummy(p, 7), 1.0)  # r0 decoding
    p = s.schedule(1.0)
    s.on_batch_done(p, dummy(p, 7), 2.0)  # r0 decode + r1 prompt
    assert {q.seq_index for q in p.parts} == {0, 1}
    t = 2.0
    while s.seqs[1].num_preemptions == 0:
        p = s.schedule(t)
        t += 1
        s.on_batch_done(p, dummy(p, 7), t)
    r1 = s.seqs[1]
    assert r1.status is SeqStatus.WAITING and r1.num_computed == 0 and r1.block_table == []
    n_out = len(r1.output_token_ids)
    assert n_out >= 1
    while True:
        p = s.schedule(t)
        t += 1
        mine = [q for q in p.parts if q.seq_index == 1]
        if mine:
            break
        s.on_batch_done(p, dummy(p, 7), t)
    q = mine[0]
    assert q.start == 0 and q.is_prefill
    assert q.token_ids == (s.seqs[1].request.prompt_token_ids + r1.output_token_ids)[: q.num_tokens]
    assert q.sample == (q.num_tokens == 6 + n_out)  # prompt + outputs recomputed, then it samples


# ---------------------------------------------------------------------------------------------
# finishing
# ---------------------------------------------------------------------------------------------

def test_finish_reasons():
    s = make("sarathi", eos=(EOS,), max_len=20)
    s.add_requests([req(0, 4, 3), req(1, 4, 50), req(2, 16, 50)])
    t = 0.0
    while s.has_unfinished:
        p = s.schedule(t)
        t += 1
        s.on_batch_done(p, [None if not q.sample else SampleResult(EOS if q.seq_index == 1 and
                                                                     s.seqs[1].output_token_ids else 5)
                            for q in p.parts], t)
    assert s.seqs[0].finish_reason == "length" and s.seqs[0].output_token_ids == [5, 5, 5]
    assert s.seqs[1].finish_reason == "stop" and s.seqs[1].output_token_ids == [5, EOS]
    assert s.seqs[2].finish_reason == "length" and len(s.seqs[2].output_token_ids) == 4  # context 20


def test_ignore_eos_runs_to_max_tokens():
    s = make("sarathi", eos=(EOS,), ignore_eos=True)
    s.add_requests([req(0, 4, 6)])
    t = 0.0
    while s.has_unfinished:
        p = s.schedule(t)
        t += 1
        s.on_batch_done(p, dummy(p, EOS), t)
    assert s.seqs[0].finish_reason == "length" and s.seqs[0].output_token_ids == [EOS] * 6


def test_prompt_over_the_context_is_an_error_not_a_crash():
    s = make("sarathi", max_len=32, num_blocks=100)
    s.add_requests([req(0, 40, 5), req(1, 5, 3), Request(id="e", prompt_token_ids=[], max_tokens=3, index=2)])
    assert s.seqs[0].finish_reason.startswith("error: ") and "context" in s.seqs[0].finish_reason
    assert s.seqs[2].finish_reason.startswith("error: ")
    fp = FakePipeline(s, 1).run()
    assert s.seqs[1].finish_reason == "length"
    assert all(0 not in {q.seq_index for q in p.parts} for p, _ in fp.plans)


def test_request_larger_than_the_kv_cache_is_an_error():
    s = make("vllm", num_blocks=4, block_size=4)  # 16 tokens
    s.add_requests([req(0, 10, 10), req(1, 5, 5)])
    assert s.seqs[0].finish_reason.startswith("error: ") and s.seqs[1].finish_reason is None


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown scheduler"):
        make("round_robin")


# ---------------------------------------------------------------------------------------------
# lossless: every policy generates the same tokens as unbatched generation
# ---------------------------------------------------------------------------------------------

LOSSLESS_SETTINGS = [
    dict(pp=1, num_blocks=4096, chunk=16, batch=8),
    dict(pp=2, num_blocks=4096, chunk=8, batch=6),
    dict(pp=3, num_blocks=30, chunk=16, batch=8, block_size=4),  # tight KV: preemptions
    dict(pp=2, num_blocks=96, chunk=12, batch=5, block_size=1, tile=4),
    dict(pp=4, num_blocks=12, chunk=32, batch=3, block_size=8),
]


@pytest.mark.parametrize("setting", LOSSLESS_SETTINGS)
def test_all_policies_generate_identical_outputs(setting):
    setting = dict(setting)
    pp = setting.pop("pp")
    reqs = mixed_workload(10, seed=pp)
    results = {}
    for policy in POLICIES:
        s = make(policy, pp=pp, max_len=96, **setting)
        results[policy] = run_all(s, [Request(**vars(r)) for r in reqs], pp=pp).outputs()
    expect = [("stop" if out and out[-1] == EOS else "length", out)
              for out in (reference(r, 96, (EOS,)) for r in reqs)]
    for policy in POLICIES:
        assert results[policy] == expect, policy
    assert any(reason == "stop" for reason, _ in expect)  # both finish paths are exercised


def test_sequence_token_ids_across_prompt_and_outputs():
    from pp_sarathi.scheduler.sequence import Sequence

    seq = Sequence(Request("r", [10, 11, 12], max_tokens=5))
    seq.output_token_ids = [20, 21]
    assert seq.token_ids(0, 2) == [10, 11]
    assert seq.token_ids(1, 5) == [11, 12, 20, 21]  # across the boundary (recompute after preemption)
    assert seq.token_ids(4, 5) == [21]  # a decode
    assert seq.token_ids(3, 5) == [20, 21]
    assert seq.token_ids(0, 5) == [10, 11, 12, 20, 21]
