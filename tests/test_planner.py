"""The compute-uniform planner (sarathi_uniform): spans prompts, tiles, caps, KV, its target T
and how T adapts; pure Python with a synthetic cost model (no torch)."""
from __future__ import annotations

import statistics

import pytest

from pp_sarathi.config import SchedulerConfig
from pp_sarathi.cost import CostModel, PlanCost
from pp_sarathi.scheduler import BlockManager, SampleResult, make_scheduler
from pp_sarathi.scheduler.planner import TargetRule, decodes_to_take, largest_fit
from test_scheduler import EOS, LOSSLESS_SETTINGS, FakePipeline, mixed_workload, reference, req, run_all


class ToyCost(CostModel):
    """Linear in tokens, attention proportional to the pairs it reads, a fixed per-batch cost."""

    source = "toy"

    def __init__(self):
        super().__init__(None, "float32")

    def linear(self, t): return 1e-4 * t  # noqa: E704
    def misc(self, t): return 0.0  # noqa: E704
    def attn_prefill(self, c, k): return 2e-7 * c * (k + c / 2)  # noqa: E704
    def attn_decode(self, ctx): return 2e-7 * sum(ctx)  # noqa: E704
    def embed(self, t): return 1e-6 * t  # noqa: E704
    def lm_head(self, rows): return 2e-5 * rows  # noqa: E704
    def sample(self, rows): return 0.0  # noqa: E704
    def overhead(self, parts, t): return 1e-3  # noqa: E704
    def p2p(self, nbytes): return 0.0  # noqa: E704


def make(*, chunk=64, batch=8, tile=1, pp=1, num_blocks=4096, block_size=4, max_len=1024,
         target_ms=None, layers=None, chunks_in_flight=False):
    cfg = SchedulerConfig(name="sarathi_uniform", chunk_size=chunk, max_batch_size=batch, tile_size=tile,
                          target_ms=target_ms, chunks_in_flight=chunks_in_flight)
    cost = PlanCost(ToyCost(), layers or [4] * pp)
    return make_scheduler(cfg, BlockManager(num_blocks, block_size), max_len, pp, (0,), False, cost)


def test_needs_a_predictor_and_a_positive_target():
    with pytest.raises(ValueError, match="predictor"):
        make_scheduler(SchedulerConfig(name="sarathi_uniform"), BlockManager(64, 4), 256)
    with pytest.raises(ValueError, match="target_ms"):
        make(target_ms=0.0)


def test_largest_fit_is_tile_aligned():
    fits = lambda n: n <= 50  # noqa: E731
    assert largest_fit(fits, 40, 0, 16) == 40  # the whole remainder fits
    assert largest_fit(fits, 100, 0, 16) == 48
    assert largest_fit(fits, 100, 3, 16) == 45  # base 3 + 45 = 48
    assert largest_fit(lambda n: False, 100, 0, 16) == 0


def test_spans_prompt_boundaries():
    """A prompt's short last chunk is topped up with the next prompt's first chunk."""
    s = make(target_ms=18.0, chunk=64)
    s.add_requests([req(0, 70, 4), req(1, 70, 4), req(2, 70, 4)])
    p1 = s.schedule(0.0)
    assert [x.seq_index for x in p1.parts] == [0]  # 70 tokens do not fit 18 ms: one chunk
    s.on_batch_done(p1, [None], 1.0)
    p2 = s.schedule(1.0)
    idx = [x.seq_index for x in p2.parts]
    assert idx[:2] == [0, 1], "the rest of prompt 0 then the start of prompt 1"
    assert p2.parts[0].num_tokens == 70 - p1.parts[0].num_tokens
    assert p2.parts[0].sample and not p2.parts[1].sample


def test_tiles_caps_and_kv():
    s = make(target_ms=50.0, tile=16, batch=4, pp=2)
    s.add_requests([req(i, 37, 3) for i in range(6)])
    plan = s.schedule(0.0)
    assert plan.num_tokens % 16 == 0
    assert s.per_batch_cap == 2
    # The cap, plus one part that tops up a prompt whose whole remainder the batch took.
    assert len(plan.parts) <= s.per_batch_cap + 1
    if len(plan.parts) > s.per_batch_cap:
        assert plan.parts[-2].sample and plan.parts[-1].is_prefill
    # KV: 10 blocks of 4 tokens hold 40 tokens; a new request never preempts.
    s = make(target_ms=50.0, num_blocks=10, block_size=4)
    s.add_requests([req(0, 30, 3), req(1, 30, 3)])
    plan = s.schedule(0.0)
    assert sum(s.blocks.blocks_for(x.start + x.num_tokens) for x in plan.parts) <= 10


def _done(s, plan, now):
    s.on_batch_done(plan, [SampleResult(5) if x.sample else None for x in plan.parts], now)


def test_a_remainder_at_the_cap_is_topped_up():
    """Decodes fill the request cap but for one part, and the oldest prompt has a short
    remainder left: the next prompt's first chunk still joins, so the micro-batch reaches T
    instead of ending at the remainder. Only a prompt's finished remainder earns that part."""
    s = make(target_ms=18.0, batch=6, pp=2, chunk=64)
    assert s.per_batch_cap == 3
    s.add_requests([req(0, 4, 8), req(1, 4, 8), req(2, 50, 4), req(3, 60, 4)])
    p1 = s.schedule(0.0)
    assert [(x.seq_index, x.num_tokens) for x in p1.parts][:2] == [(0, 4), (1, 4)]
    assert p1.parts[2].seq_index == 2 and not p1.parts[2].sample
    _done(s, p1, 1.0)
    p2 = s.schedule(1.0)
    assert [(x.seq_index, x.is_prefill) for x in p2.parts] == [(0, False), (1, False), (2, True), (3, True)]
    assert p2.parts[2].sample and p2.parts[2].start + p2.parts[2].num_tokens == 50
    assert max(p2.predicted_stage_s) == pytest.approx(p2.target_s, rel=0.05)


def test_a_cut_chunk_at_the_cap_takes_no_extra_part():
    """The oldest prompt's next chunk does not fit T: the micro-batch ends with it, at the cap."""
    s = make(target_ms=18.0, batch=6, pp=2, chunk=64)
    s.add_requests([req(0, 4, 8), req(1, 4, 8), req(2, 200, 4), req(3, 60, 4)])
    _done(s, s.schedule(0.0), 1.0)
    p2 = s.schedule(1.0)
    assert [x.seq_index for x in p2.parts] == [0, 1, 2] and not p2.parts[2].sample
    assert len(p2.parts) == s.per_batch_cap


def test_no_spare_part_aligns_the_last_chunk_instead():
    """At the cap's last slot with nothing to top up with, a tile-aligned chunk is taken rather
    than an unaligned whole remainder (decodes 2 + chunk 6 = 8, not 2 + 13 = 15)."""
    s = make(target_ms=9.0, batch=6, pp=2, chunk=64, tile=8)
    s.add_requests([req(0, 4, 8), req(1, 4, 8), req(2, 21, 4)])
    _done(s, s.schedule(0.0), 1.0)
    p2 = s.schedule(1.0)
    assert [(x.seq_index, x.num_tokens) for x in p2.parts] == [(0, 1), (1, 1), (2, 6)]


def test_a_prompt_s_next_chunk_follows_while_its_earlier_chunk_is_in_flight():
    """With ``chunks_in_flight`` (stages run micro-batches in order) a prompt's next chunk may
    go into the next micro-batch before the earlier one is back; a sampled part (the prompt's
    last chunk) is never followed. Without it each chunk is waited for; other policies ignore it."""
    s = make(target_ms=18.0, pp=2, chunk=64, chunks_in_flight=True)
    s.add_requests([req(0, 300, 4)])
    p1, p2 = s.schedule(0.0), s.schedule(0.0)
    assert [(x.seq_index, x.start) for x in p2.parts] == [(0, p1.num_tokens)]
    assert s.seqs[0].in_flight == 2 and s.seqs[0].num_computed == 0
    plans = [p1, p2]
    while not plans[-1].parts[-1].sample:
        plans.append(s.schedule(0.0))
    assert s.schedule(0.0) is None, "nothing follows the prompt's sampled last chunk"
    assert sum(p.num_tokens for p in plans) == 300
    for i, p in enumerate(plans):
        _done(s, p, 1.0 + i)
    assert s.seqs[0].num_computed == 300 and not s.seqs[0].in_flight
    assert len(s.seqs[0].output_token_ids) == 1

    sarathi = SchedulerConfig(name="sarathi", chunk_size=64, chunks_in_flight=True)
    for waits in (make(target_ms=18.0, pp=2, chunk=64), make_scheduler(sarathi, BlockManager(4096, 4), 1024, 2)):
        waits.add_requests([req(0, 300, 4)])
        assert waits.schedule(0.0) is not None and waits.schedule(0.0) is None


def test_decodes_leave_a_request_slot_for_prompt_work():
    """A pipeline slot whose requests all decode would fill its request cap with decodes alone
    while prompts wait; one decode waits for the next micro-batch instead, so a prompt chunk
    joins. With no prompt work, or more decodes than the other slots can take, none waits."""
    s = make(target_ms=18.0, batch=8, pp=2, chunk=64)  # 4 requests per micro-batch
    s.add_requests([req(i, 5, 6) for i in range(4)] + [req(4, 90, 3, arrival=1.0)])
    _done(s, s.schedule(0.0), 1.0)
    assert len(decodes_to_take(s)[0]) == 4, "no prompt has arrived yet"
    p = s.schedule(1.0)
    assert [x.is_prefill for x in p.parts] == [False, False, False, True]
    held = s.seqs[3]
    assert not held.in_flight and s.schedule(1.0).parts[0].seq_index == held.index

    s = make(target_ms=18.0, batch=6, pp=2, chunk=64)  # 3 per micro-batch, 1 more admissible
    s.add_requests([req(i, 5, 6) for i in range(5)] + [req(5, 90, 3, arrival=1.0)])
    _done(s, s.schedule(0.0), 1.0)  # 3 + the part past the cap: 4 decoding
    _done(s, s.schedule(0.0), 1.0)  # the fifth
    s.admit_arrivals(1.0)
    assert len(s.running) == 5 and s.waiting
    assert len(decodes_to_take(s)[0]) == 3, "5 decodes over 2 slots: 3 here, not the cap's 2"


def test_a_held_decode_is_not_preempted_for_the_prompt_that_took_its_slot():
    """The KV cache is nearly full: the partial prompt's next chunk would need the held decode's
    blocks. The decode keeps them (it waits one micro-batch, not a recompute), and with no free
    block at all no decode is held."""
    s = make(target_ms=8.0, batch=8, pp=2, chunk=64, num_blocks=7, block_size=4)
    s.add_requests([req(i, 3, 10) for i in range(4)] + [req(4, 16, 1)])
    p1 = s.schedule(0.0)
    assert [x.seq_index for x in p1.parts] == [0, 1, 2, 3, 4] and not p1.parts[-1].sample
    _done(s, p1, 1.0)
    assert s.blocks.num_free == 1
    p2 = s.schedule(1.0)
    assert [x.seq_index for x in p2.parts] == [0, 1, 2]  # the prompt's chunk found no KV
    assert s.seqs[3].num_preemptions == 0 and s.seqs[3].block_table
    _done(s, p2, 2.0)
    prompt = s.seqs[4]
    s.blocks.grow(prompt, (len(prompt.block_table) + s.blocks.num_free) * 4)  # it takes every free block
    assert len(decodes_to_take(s)[0]) == 4, "no free block: a held decode would make room for nothing"


@pytest.mark.parametrize("setting", LOSSLESS_SETTINGS)
def test_chunks_in_flight_are_lossless_under_kv_pressure(setting):
    """The scheduler tests' lossless settings (tight KV and preemptions among them) with a
    prompt's chunks in consecutive micro-batches in flight: outputs equal unbatched generation."""
    setting = dict(setting)
    setting_kv_is_tight = setting["num_blocks"] <= 30
    pp, chunk = setting.pop("pp"), setting.pop("chunk")
    cfg = SchedulerConfig(name="sarathi_uniform", chunk_size=chunk, max_batch_size=setting.pop("batch"),
                          tile_size=setting.pop("tile", 1), chunks_in_flight=True)
    s = make_scheduler(cfg, BlockManager(setting.pop("num_blocks"), setting.pop("block_size", 4)), 96, pp,
                       (EOS,), False, PlanCost(ToyCost(), [4] * pp))
    reqs = mixed_workload(10, seed=pp)
    fp = run_all(s, reqs, pp=pp)
    assert fp.outputs() == [("stop" if out and out[-1] == EOS else "length", out)
                            for out in (reference(r, 96, (EOS,)) for r in reqs)]
    assert (fp.overlaps > 0) == (pp > 1)
    if setting_kv_is_tight:
        assert fp.recomputes > 0, "this setting forces preemptions"


@pytest.mark.parametrize("pp,batch", [(4, 4), (2, 2), (2, 5), (3, 9)])
def test_the_extra_part_never_leaves_a_pipeline_slot_without_work(pp, batch):
    """Where the other micro-batches in flight could hold every admitted request with the extra
    part, it is not used: a free slot finds a request whenever prompts wait."""
    s = make(target_ms=18.0, pp=pp, batch=batch, chunk=64)
    s.add_requests([req(i, 5 + 7 * i % 50, 3) for i in range(16)])
    schedule, starved = s.schedule, []

    def counting(now):
        plan = schedule(now)
        if plan is None and s.waiting:
            starved.append(now)
        return plan

    s.schedule = counting
    FakePipeline(s, pp).run()
    assert not starved


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("pp,tile", [(1, 1), (2, 1), (2, 8), (4, 4)])
def test_lossless_and_near_target(pp, tile, overlap):
    """Outputs equal unbatched generation; every micro-batch the target cut short (its last
    part a prompt chunk with tokens left, the request cap not reached) is within one tile's
    time of its target."""
    s = make(pp=pp, tile=tile, batch=max(8, 4 * pp), chunk=48, chunks_in_flight=overlap)
    reqs = [req(i, 20 + 13 * i % 90, 2 + i % 7, arrival=0.3 * i) for i in range(24)]
    s.add_requests(reqs)
    near = []

    def check(sched, plan, snap):
        last = plan.parts[-1]
        cut = last.is_prefill and last.start + last.num_tokens < sched.seqs[last.seq_index].num_tokens
        if plan.target_s and cut and len(plan.parts) < sched.per_batch_cap:
            tol = 0.01 + tile * 5e-4 / plan.target_s  # one tile of 4 toy layers
            near.append((max(plan.predicted_stage_s) / plan.target_s, tol))

    pipe = FakePipeline(s, pp, check)
    pipe.run()
    for r in reqs:
        assert s.seqs[r.index].output_token_ids == reference(r, 1024, (0,))
    assert (pipe.overlaps > 0) == (overlap and pp > 1), "a prompt's chunks in two micro-batches in flight"
    assert len(near) >= 3, "few micro-batches were filled to their target"
    assert all(abs(x - 1) <= tol for x, tol in near), sorted(near)[:3] + sorted(near)[-3:]


def test_target_override_is_used():
    s = make(target_ms=12.5)
    s.add_requests([req(0, 300, 4)])
    plan = s.schedule(0.0)
    assert plan.target_s == pytest.approx(0.0125)
    assert max(plan.predicted_stage_s) == pytest.approx(0.0125, rel=0.01)


class _Seq:
    def __init__(self, prompt, out, max_tokens, computed):
        from pp_sarathi.workload.request import Request
        self.request = Request(id="x", prompt_token_ids=[1] * prompt, max_tokens=max_tokens, index=0)
        self.output_token_ids = [3] * out
        self.num_computed = computed
        self.prompt_len = prompt

    num_tokens = property(lambda s: len(s.request.prompt_token_ids) + len(s.output_token_ids))
    num_unscheduled = property(lambda s: s.num_tokens - s.num_computed)
    is_prefill = property(lambda s: not s.output_token_ids or s.num_unscheduled > 1)


def test_target_adapts_to_queue_and_decodes():
    cost = PlanCost(ToyCost(), [4, 4])
    # The 8 decodes hold the request slots (pacing needs decodes to pace against).
    rule = TargetRule(chunk_size=128, tile=1, depth=2, max_batch_size=8)
    decodes = [_Seq(100, 5, 100, 104) for _ in range(8)]  # 95 decode steps left each
    few = [_Seq(40, 0, 10, 0)]
    many = [_Seq(400, 0, 10, 0) for _ in range(20)]
    t_few = rule.raw(decodes, few, cost)
    p_few = rule.prefill_tokens
    t_many = rule.raw(decodes, many, cost)
    assert t_many > t_few and rule.prefill_tokens > p_few, "a longer queue raises T"
    t_more_dec = rule.raw(decodes * 3, few, cost)
    assert t_more_dec > t_few, "more decodes per micro-batch raise T"
    # No decodes running: the whole budget (nothing to pace prefills against).
    rule.raw([], few, cost)
    assert rule.prefill_tokens == 128
    # Smoothing: T moves towards a new raw value gradually.
    rule2 = TargetRule(chunk_size=128, tile=1, depth=2, max_batch_size=8)
    a = rule2(decodes, few, cost)
    b = rule2(decodes, many, cost)
    assert a < b < t_many


def test_target_paces_only_while_decodes_hold_the_slots():
    cost = PlanCost(ToyCost(), [4, 4])
    decodes = [_Seq(100, 5, 100, 104) for _ in range(8)]
    few = [_Seq(40, 0, 10, 0)]
    # 8 decodes of 8 slots: the one short prompt is spread over their remaining steps.
    held = TargetRule(chunk_size=128, tile=1, depth=2, max_batch_size=8)
    held.raw(decodes, few, cost)
    assert held.prefill_tokens < 124
    # 8 decodes of 32 slots (the queue or the KV cache keeps the decode set small): the
    # queued prompts are the decodes to come, so they get the budget less the decodes.
    short = TargetRule(chunk_size=128, tile=1, depth=2, max_batch_size=32)
    short.raw(decodes, few, cost)
    assert short.prefill_tokens == 128 - 4
    # Just at the share (24 of 32) pacing is back.
    short.raw(decodes * 3, few, cost)
    assert short.prefill_tokens < 128 - 12


# ---- token-exact against transformers (real model, pp=1 and pp=2) ----------------------------

def test_matches_hf_pp1(hf_checkpoint, workload_file, run_config):
    from test_model_reference import _run_and_compare

    path, hf_model = hf_checkpoint("llama")
    out = _run_and_compare(path, hf_model, workload_file, run_config, chunk_size=16, k=2,
                           lens=[3, 17, 30, 11], max_tokens=[6, 7, 5, 8], scheduler="sarathi_uniform")
    assert all(b.predicted_stage_s for b in out.batches)
    assert any(b.target_s for b in out.batches)


@pytest.mark.parametrize("overlap", [False, True])
def test_matches_hf_pp2(hf_checkpoint, workload_file, run_config, tmp_path, overlap):
    from conftest import make_requests, random_prompts, run_pipeline
    from test_model_reference import assert_matches_hf, hf_greedy

    path, hf_model = hf_checkpoint("llama")
    prompts = random_prompts([5, 23, 14, 31, 9], hf_model.config.vocab_size, seed=99)
    max_tokens = [7, 4, 9, 5, 6]
    cfg = run_config(path, workload_file(make_requests(prompts, max_tokens)), scheduler="sarathi_uniform",
                     chunk_size=16, logprobs=2)
    cfg.scheduler.chunks_in_flight = overlap
    out = run_pipeline(cfg, 2, tmp_path)
    assert out.error is None
    for seq, prompt, n in zip(out.sequences, prompts, max_tokens):
        hf_tokens, hf_logits = hf_greedy(hf_model, prompt, n)
        assert_matches_hf(seq, hf_tokens, hf_logits, 2)
    assert out.predictor and out.predictor["source"] == "probe" and out.predictor["observations"] > 0
    # With chunks_in_flight, a prompt's chunk planned while its earlier chunk was still in the
    # pipeline: the stages' order is what keeps that token-exact.
    assert overlap == any(set(a.request_indices) & set(b.request_indices) and b.scheduled_at < a.done_at
                          for a, b in zip(out.batches, out.batches[1:]))


# ---- the simulator: the same planner class at pp 4 and 8 -----------------------------------

@pytest.mark.parametrize("pp", [4, 8])
def test_simulated_stage_bubble_below_sarathi(pp):
    from test_sim_bubbles import imbalanced

    from pp_sarathi.metrics.summary import summarize
    from pp_sarathi.sim.simulate import run_simulation

    res = {}
    for name in ("sarathi", "sarathi_uniform"):
        cfg = imbalanced(name, pp)
        cfg.model.num_layers = max(8, pp)
        res[name] = summarize(run_simulation(cfg))
    frac = {n: max(s["bubble_fraction"] for s in r["stages"]) for n, r in res.items()}
    assert frac["sarathi_uniform"] < frac["sarathi"], frac
    assert res["sarathi_uniform"]["wall_s"] <= res["sarathi"]["wall_s"]
    assert res["sarathi_uniform"]["throughput"]["decode_tokens"] == res["sarathi"]["throughput"]["decode_tokens"]
    assert res["sarathi_uniform"]["predictor"]["error"]["p50"] == pytest.approx(0.0, abs=1e-9)


def test_balanced_partition_from_the_predictor():
    """The embedding lookup costs next to nothing; a heavy LM head takes layers off the last stage."""
    from pp_sarathi.config import HardwareConfig, ModelConfig, SchedulerConfig
    from pp_sarathi.cost import RooflineCosts
    from pp_sarathi.model.arch import ModelArch
    from pp_sarathi.runtime.partition import layer_counts, predicted_stage_seconds, reference_shape

    arch = ModelArch.from_config(ModelConfig())
    ref = reference_shape(SchedulerConfig(), 2, arch.max_position_embeddings)
    cost = RooflineCosts(arch, "float32", HardwareConfig())
    assert layer_counts(arch, 2, "balanced", cost, ref) == [4, 4]
    big = ModelArch.from_config(ModelConfig(vocab_size=128000))
    cost = RooflineCosts(big, "float32", HardwareConfig())
    counts = layer_counts(big, 4, "balanced", cost, ref)
    assert counts[-1] < max(counts) and sum(counts) == 8
    times = predicted_stage_seconds(big, counts, cost, ref)
    uniform = predicted_stage_seconds(big, [2, 2, 2, 2], cost, ref)
    assert max(times) < max(uniform)


def test_probed_fit_recovers_its_terms_and_plan_cost_agrees():
    """The probe's least squares recovers known terms; PlanCost's fast path equals its full one."""
    from pp_sarathi.config import ModelConfig
    from pp_sarathi.cost import BatchShape
    from pp_sarathi.cost.probed import ProbedCosts
    from pp_sarathi.model.arch import ModelArch

    arch = ModelArch.from_config(ModelConfig())
    truth = ProbedCosts(arch, "float32", {"weights": 2e-3, "per_token": 3e-5, "per_pair": 1e-8,
                                          "per_decode_key": 4e-8, "per_part": 1e-4})
    shapes = [([(32, 0)], []), ([(128, 0)], []), ([(256, 0)], []), ([(128, 384)], []),
              ([(64, 0), (64, 64)], []), ([], [256] * 4), ([], [512] * 16), ([(96, 128)], [300] * 12)]
    rows = [(BatchShape.of(p, d, 0), 4, truth.step(BatchShape.of(p, d, 0), 4)) for p, d in shapes]
    fit = ProbedCosts.fit(arch, "float32", rows)
    for k, v in truth.coef.items():
        assert fit.coef[k] == pytest.approx(v, rel=1e-3), k
    for layers in ([8], [4, 4], [3, 3, 2], [2, 2, 2, 2]):
        pc = PlanCost(fit, layers)
        dec = [300, 412, 90]
        f = pc.with_decodes(dec)
        for pre in ([], [(100, 0)], [(40, 200), (17, 0)]):
            assert f(pre, 3) == pytest.approx(pc.seconds(pre, dec, 3), rel=1e-12)
        pc.observe(pc.seconds([(64, 0)], dec, 3), 2 * pc.seconds([(64, 0)], dec, 3))
        assert pc.scale == pytest.approx(2.0)  # the first observation sets the scale


def test_plan_cost_refits_the_probe_to_what_the_run_measures():
    """A run whose decodes cost 3x what the probe saw (and weights 1.5x): the online refit of
    the probed terms predicts its micro-batches, where one overall scale cannot."""
    import random

    from pp_sarathi.config import ModelConfig
    from pp_sarathi.cost import BatchShape
    from pp_sarathi.cost.probed import ProbedCosts
    from pp_sarathi.model.arch import ModelArch

    arch = ModelArch.from_config(ModelConfig())
    probe = {"weights": 2e-3, "per_token": 3e-5, "per_pair": 1e-8, "per_decode_key": 4e-8, "per_part": 1e-4}
    run = dict(probe, weights=3e-3, per_decode_key=1.6e-7)
    prior, truth = ProbedCosts(arch, "float32", probe), ProbedCosts(arch, "float32", run)
    rng = random.Random(0)

    def batch():
        decodes = [rng.randint(50, 900) for _ in range(rng.randint(0, 24))]
        prefills = [(rng.randint(2, 128), rng.choice([0, rng.randint(1, 600)]))] if rng.random() < 0.8 or not decodes else []
        return prefills, decodes, len(decodes) + len(prefills)

    for layers in ([4, 4], [8]):
        pc = PlanCost(prior, layers)
        last = len(layers) == 1
        for _ in range(PlanCost.REFIT_WINDOW):
            pre, dec, sampled = batch()
            measured = truth.step(BatchShape.of(pre, dec, sampled), layers[0], last)
            pc.observe(pc.stage_seconds(pre, dec, sampled)[0], measured, pre, dec, sampled)
        assert pc.refits == PlanCost.REFIT_WINDOW // PlanCost.REFIT_EVERY
        assert pc.cost.prior is prior and pc.cost.info["refits"] == pc.refits
        scaled_only = PlanCost(prior, layers)
        scaled_only.scale = statistics.median(
            truth.step(BatchShape.of(*b), layers[0], last) / prior.step(BatchShape.of(*b), layers[0], last)
            for b in (batch() for _ in range(64)))
        errors, scaled_errors = [], []
        for _ in range(100):
            pre, dec, sampled = batch()
            true_s = truth.step(BatchShape.of(pre, dec, sampled), layers[0], last)
            errors.append(abs(pc.stage_seconds(pre, dec, sampled)[0] / true_s - 1))
            scaled_errors.append(abs(scaled_only.stage_seconds(pre, dec, sampled)[0] / true_s - 1))
        # The probe's anchors pull a little towards its own shape of the costs.
        assert max(errors) < 0.05 and statistics.median(errors) < 0.02, (max(errors), statistics.median(errors))
        assert max(scaled_errors) > 0.15  # what the refit is for
