"""Simulator: event engine on hand-computable pipelines, cost models, simulate vs a real run."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from pp_sarathi.config import RunConfig
from pp_sarathi.metrics.bubbles import account
from pp_sarathi.metrics.compare import compare_ratios
from pp_sarathi.metrics.summary import summarize
from pp_sarathi.runtime.driver import drive
from pp_sarathi.scheduler import BatchPlan, ScheduledPart
from pp_sarathi.config import HardwareConfig
from pp_sarathi.cost import (BatchShape, CostModel, ProfileCosts, RooflineCosts, StageTimes, holdout_errors,
                             read_profile, write_profile)
from pp_sarathi.cost.profile_csv import stage_row_shape
from pp_sarathi.sim.engine import PipelineEngine, SimPipeline, VirtualClock
from pp_sarathi.sim.simulate import run_simulation, sim_arch, simulate_compare, simulation_results
from pp_sarathi.sim.workload import PlaceholderTokens, sim_requests
from pp_sarathi.workload import load_workload

# ---------------------------------------------------------------------------------------
# Event engine on hand-built pipelines
# ---------------------------------------------------------------------------------------


class TokensAreSeconds(CostModel):
    """Every stage computes a micro-batch for as many seconds as it has tokens; free transfers."""

    def __init__(self, hop: float = 0.0):
        self.hop = hop

    def stage_times(self, b: BatchShape, layers: list[int]) -> StageTimes:
        n = len(layers)
        return StageTimes([float(b.num_tokens)] * n, [self.hop] * (n - 1), 0.0)

    def describe(self) -> dict:
        return {"source": "test"}


class ScriptedScheduler:
    """Hands out one single-part plan per entry of ``sizes`` (tokens = seconds per stage)."""

    def __init__(self, sizes: list[int]):
        self.sizes = list(sizes)
        self.next = 0
        self.done = 0

    @property
    def has_unfinished(self) -> bool:
        return self.done < len(self.sizes)

    def schedule(self, now: float):
        if self.next >= len(self.sizes):
            return None
        n = self.sizes[self.next]
        part = ScheduledPart(seq_index=self.next, start=0, token_ids=[0] * n, block_table=[0],
                             is_prefill=True, sample=True, output_index=0)
        plan = BatchPlan(id=self.next, parts=[part], scheduled_at=now)
        self.next += 1
        return plan

    def on_batch_done(self, plan, results, now):
        self.done += 1
        return []

    def next_arrival(self):
        return None

    def abort_all(self, reason, now):  # pragma: no cover - never reached
        raise AssertionError(reason)


def run_scripted(sizes: list[int], stages: int, hop: float = 0.0):
    clock = VirtualClock()
    pipe = SimPipeline(TokensAreSeconds(hop), [1] * stages, clock)
    batches = drive(ScriptedScheduler(sizes), pipe, clock)
    report = account(pipe.records, [(b.scheduled_at, b.done_at) for b in batches],
                     {b.batch_id: b.scheduled_at for b in batches})
    return pipe.records, batches, report, clock.now()


def by_stage(records, stage):
    return sorted((r for r in records if r.stage == stage), key=lambda r: r.batch_id)


def test_equal_stage_times_have_no_bubble_after_fill():
    records, batches, report, end = run_scripted([1] * 12, stages=4)
    for s in range(4):
        recs = by_stage(records, s)
        # Stage s starts micro-batch k at k + s and never idles in between.
        assert [r.compute_start for r in recs] == [float(k + s) for k in range(12)]
        assert report.stage_bubble_s[s] == 0.0
    assert end == 12 + 3  # fill (3) + 12 micro-batches
    assert all(v == 0.0 for v in report.batch_bubble_s.values())


def test_one_slow_micro_batch_makes_a_known_bubble():
    # Two stages, micro-batch 1 takes 3 s per stage, the others 1 s (driver = stage 0).
    # stage 0: b0 [0,1] b1 [1,4] b2 [4,5] | idle 5-7 (b3 needs b1's slot back at 7) | b3 [7,8] ...
    # stage 1: b0 [1,2] | idle 2-4 (waits for b1) | b1 [4,7] b2 [7,8] b3 [8,9] ...
    records, batches, report, end = run_scripted([1, 3, 1, 1, 1, 1], stages=2)
    s0 = [(r.compute_start, r.compute_end) for r in by_stage(records, 0)]
    s1 = [(r.compute_start, r.compute_end) for r in by_stage(records, 1)]
    assert s0 == [(0, 1), (1, 4), (4, 5), (7, 8), (8, 9), (9, 10)]
    assert s1 == [(1, 2), (4, 7), (7, 8), (8, 9), (9, 10), (10, 11)]
    assert report.stage_bubble_s == {0: 2.0, 1: 2.0}
    # Stage 1's receive wait for b1 is measured apart from compute.
    assert by_stage(records, 1)[1].recv_start == 2.0 and by_stage(records, 1)[1].recv_end == 4.0
    assert end == 11.0


def test_transfer_time_delays_the_next_stage():
    records, _, _, end = run_scripted([2, 2], stages=3, hop=0.5)
    s2 = by_stage(records, 2)
    # b0: stage0 [0,2], hop, stage1 [2.5,4.5], hop, stage2 [5,7]
    assert (s2[0].recv_end, s2[0].compute_start, s2[0].compute_end) == (5.0, 5.0, 7.0)
    # b1: stage0 [2,4]; stage1 posts its receive at 4.5 -> [5,7]; stage2 posts at 7 -> [7.5,9.5]
    assert [(r.recv_start, r.compute_start) for r in by_stage(records, 1)] == [(0.0, 2.5), (4.5, 5.0)]
    assert (s2[1].recv_start, s2[1].compute_start) == (7.0, 7.5)
    assert end == 9.5


def test_engine_push_is_fifo_per_stage():
    eng = PipelineEngine(3)
    t = StageTimes([1.0, 2.0, 1.0], [0.0, 0.0], 0.25)
    s0, done = eng.push(0, 0.0, t)
    assert (s0, done) == (1.0, 4.25)
    s0, done = eng.push(1, 0.0, t)  # queued behind micro-batch 0 on every stage
    assert (s0, done) == (2.0, 6.25)


def test_engine_with_measured_send_and_receive_costs():
    """Eager sends: data reaches stage 1 ``hop`` after stage 0's compute; a stage that finds it
    already there pays ``recv``; every stage is busy ``send`` after computing."""
    eng = PipelineEngine(2)
    t = StageTimes([1.0, 2.0], [0.5], 0.25, send=[0.1, 0.2], recv=[0.0, 0.3])
    s0, done = eng.push(0, 0.0, t)
    # stage 0 [0,1] + send -> 1.1; stage 1 waits: data at 1 + 0.5 -> [1.5, 3.5], sends until 3.7
    assert (s0, done) == (1.1, 3.75)
    s0, done = eng.push(1, s0, t)
    # stage 0 [1.1, 2.1] -> 2.2; data at 2.6 but stage 1 asks at 3.7: 3.7 + 0.3 -> [4.0, 6.0]
    assert s0 == pytest.approx(2.2) and done == pytest.approx(6.25)
    r = [x for x in eng.records if x.stage == 1][1]
    assert (r.recv_start, r.compute_start, r.send_end) == pytest.approx((3.7, 4.0, 6.2))


def test_jitter_is_reproducible_and_keeps_the_batches():
    def run(jitter, seed):
        clock = VirtualClock()
        pipe = SimPipeline(TokensAreSeconds(), [1, 1], clock, jitter=jitter, seed=seed)
        batches = drive(ScriptedScheduler([1, 2, 3, 2, 1, 4]), pipe, clock)
        return [(r.stage, r.batch_id, r.compute_start, r.compute_end) for r in pipe.records], \
            [b.batch_id for b in batches]
    plain, ids = run(0.0, 0)
    a, ids_a = run(0.1, 7)
    assert run(0.1, 7) == (a, ids_a) and ids_a == ids  # same seed, same draws; same micro-batches
    assert a != plain and run(0.1, 8)[0] != a
    ratios = [(x[3] - x[2]) / (p[3] - p[2]) for x, p in zip(a, plain)]
    assert all(0.5 < q < 2.0 for q in ratios) and len(set(ratios)) > 1


def test_time_share_stretches_compute_while_more_stages_than_cores_compute():
    from pp_sarathi.metrics.records import StageRecord
    from pp_sarathi.sim.engine import TimeShare

    # three stages computing during [0, 3] on two cores: speed 2/3 there, full speed elsewhere
    recs = [StageRecord(s, 0, 0, 0, 0.0, 3.0, 3.0, 3.0) for s in range(3)]
    ts = TimeShare(recs, cores=2)
    assert ts.stretch(0.0, 1.0) == pytest.approx(1.5)
    assert ts.stretch(2.0, 1.0) == pytest.approx(1.0 + 1 / 3)  # 2/3 done by t=3, the rest at full speed
    assert ts.stretch(5.0, 1.0) == pytest.approx(1.0) and ts.stretch(-1.0, 0.5) == pytest.approx(0.5)
    assert TimeShare(recs, cores=4).stretch(0.0, 1.0) == pytest.approx(1.0)


def test_link_intervals_from_stage_records():
    from pp_sarathi.metrics.records import StageRecord
    from pp_sarathi.metrics.records import BatchRecord
    from pp_sarathi.sim.profile.link import link_intervals

    # batch 0: stage 1 waits for stage 0 (hop 0.5); batch 1: data there before stage 1 asks (recv 0.2)
    recs = [StageRecord(0, 0, 0, 0, 0, 1.0, 1.0, 1.1), StageRecord(1, 0, 0.2, 1.5, 1.5, 3.0, 3.0, 3.1),
            StageRecord(0, 1, 1.1, 1.1, 1.1, 2.0, 2.0, 2.2), StageRecord(1, 1, 3.1, 3.3, 3.3, 5.0, 5.0, 5.2)]
    batches = [BatchRecord(0, "prefill", 1, 1, 0, 0.0, 3.4, [0]), BatchRecord(1, "prefill", 1, 1, 0, 1.1, 5.5, [1])]
    iv = link_intervals(recs, batches, world=2, skip=0)
    assert iv["hop"] == pytest.approx([0.5]) and iv["recv"] == pytest.approx([0.2])
    assert iv["send_first"] == pytest.approx([0.1, 0.2]) and iv["send_last"] == pytest.approx([0.1, 0.2])
    assert iv["ret"] == pytest.approx([0.4])  # batch 0: the driver was waiting (batch 1 sent at 2.2 < 3.0)


# ---------------------------------------------------------------------------------------
# Cost models
# ---------------------------------------------------------------------------------------

TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  vocab_size=256, max_position_embeddings=256)


def tiny_cfg(**workload) -> RunConfig:
    cfg = RunConfig()
    cfg.device = "cpu"
    for k, v in TINY_SHAPE.items():
        setattr(cfg.model, k, v)
    cfg.model.name = "tiny-sim-test"
    cfg.scheduler.chunk_size = 32
    cfg.scheduler.max_batch_size = 8
    cfg.cache.block_size = 8
    w = cfg.workload
    w.name, w.num_requests, w.min_len, w.max_len, w.pd_ratio = "synthetic", 6, 24, 80, 3.0
    for k, v in workload.items():
        setattr(w, k, v)
    cfg.sampling.ignore_eos = True
    cfg.parallel.pp = 1
    cfg.sim.profile_max_tokens = 64
    cfg.sim.profile_max_context = 128
    cfg.sim.profile_repeats = 1
    cfg.sim.profile_p2p = False
    cfg.logging.wandb.mode = "disabled"
    return cfg


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    from pp_sarathi.sim.profile import run_profile

    path = tmp_path_factory.mktemp("profile") / "profile.csv"
    return run_profile(tiny_cfg(), path)


SHAPES = [BatchShape(1, 1, [], [17], 1, 10), BatchShape(40, 5, [(36, 0)], [5, 9, 30, 64], 4, 40),
          BatchShape(32, 2, [(31, 96)], [120], 1, 30), BatchShape(200, 3, [(100, 0), (99, 0)], [3], 3, 50)]


def test_profile_csv_has_device_dtype_and_shape_columns(tiny_profile):
    rows = read_profile(tiny_profile)
    ops = {r["op"] for r in rows}
    assert {"linear", "attn_prefill", "attn_decode", "embed", "lm_head", "sample", "overhead", "stage"} <= ops
    stages = [r for r in rows if r["op"] == "stage"]
    # pp=1: the one stage holds every layer, as the runtime builds it
    assert {r["stage"] for r in stages} == {"only"} and {r["layers"] for r in stages} == {TINY_SHAPE["num_layers"]}
    assert {r["layers"] for r in rows if r["op"] in ("linear", "attn_prefill", "attn_decode")} == {TINY_SHAPE["num_layers"]}
    for r in rows:
        assert r["device"] and r["dtype"] == "float32" and r["hidden_size"] == 64 and r["vocab_size"] == 256
        assert r["seconds"] > 0


def test_cost_model_round_trips_a_profile_csv(tiny_profile, tmp_path):
    arch = sim_arch(tiny_cfg())
    a = ProfileCosts.from_csv(tiny_profile, arch)
    copy_path = write_profile(read_profile(tiny_profile), tmp_path / "copy.csv")
    b = ProfileCosts.from_csv(copy_path, arch)
    for shape in SHAPES:
        ta, tb = a.stage_times(shape, [1, 1]), b.stage_times(shape, [1, 1])
        assert ta == tb
        assert all(x > 0 for x in ta.compute)
    errs = holdout_errors(tiny_profile)
    assert errs["all"]["held_out"] > 10 and math.isfinite(errs["all"]["mean_abs_rel_err"])


def test_profile_times_stage_steps_only_once_the_corunners_run_them(tmp_path, monkeypatch):
    """A whole stage step is timed next to co-runners that already run that very step (else it
    sees the tail of the previous point and comes out close to its uncontended time)."""
    import pp_sarathi.sim.profile as prof
    from pp_sarathi.sim.profile import bench, run

    events = []  # ("switch", point, waited) as told to the co-runners; ("time",) per timed point
    points = []

    class RecordingCorunners:
        def __init__(self, cfg, n, threads):
            self.procs = [None] * n

        def wait_ready(self):
            pass

        def run(self, i, wait=True):
            events.append(("switch", i, wait))

        def stop(self):
            pass

    class Bench(bench.Bench):
        def __init__(self, *a):
            super().__init__(*a)
            points.extend(self.points)

    sample = bench.Timer.sample
    monkeypatch.setattr(run, "Corunners", RecordingCorunners)
    monkeypatch.setattr(run, "Bench", Bench)
    monkeypatch.setattr(bench.Timer, "sample", lambda self, *a, **kw: events.append(("time",)) or sample(self, *a, **kw))
    cfg = tiny_cfg()
    cfg.parallel.pp = 2
    cfg.sim.profile_corunners = 1
    prof.run_profile(cfg, tmp_path / "p.csv")
    switch, checked = None, 0
    for ev in events:
        if ev[0] == "switch":
            switch = ev
        elif points[switch[1]].op == "stage" and points[switch[1]].cols["tokens"] <= prof.WHOLE_PROMPT_TOKENS:
            assert switch[2], f"stage point {points[switch[1]].cols} timed before the co-runners ran it"
            checked += 1
    small = [p for p in points if p.op == "stage" and p.cols["tokens"] <= prof.WHOLE_PROMPT_TOKENS]
    assert checked == len(small) * cfg.sim.profile_repeats > 0


def test_profile_misc_is_fitted_to_whole_stage_steps(tiny_profile):
    m = ProfileCosts.from_csv(tiny_profile, sim_arch(tiny_cfg()))
    assert m.misc_source == "stage" and len(m.misc_coef) == 2 and m.jitter >= 0
    for r in read_profile(tiny_profile):
        if r["op"] == "stage":  # the composition is what a stage step costs
            assert m.stage_step(stage_row_shape(r), r["layers"], r["stage"]) > 0


def test_older_profiles_with_per_op_linear_and_layer_rows_still_load(tiny_profile, tmp_path):
    """Profiles from before the stage-level measurement: four linear ops and ``layer`` rows."""
    rows = []
    for r in read_profile(tiny_profile):
        if r["op"] == "linear":
            for op in ("linear_qkv", "linear_o", "linear_gate_up", "linear_down"):
                rows.append({**r, "op": op, "seconds": r["seconds"] / 4})
        elif r["op"] == "stage":
            if r["stage"] == "only" and r["prefills"] <= 1:
                rows.append({**r, "op": "layer", "seconds": r["seconds"] / r["layers"], "layers": 0, "stage": ""})
        else:
            rows.append(r)
    path = write_profile(rows, tmp_path / "old.csv")
    m = ProfileCosts.from_csv(path, sim_arch(tiny_cfg()))
    assert m.misc_source == "layer" and not m.measured_transport
    assert all(x > 0 for x in m.stage_times(SHAPES[1], [1, 1]).compute)


def test_profile_shape_mismatch_is_an_error(tiny_profile):
    cfg = tiny_cfg()
    cfg.model.hidden_size = 128
    with pytest.raises(ValueError, match="re-run `profile`"):
        ProfileCosts.from_csv(tiny_profile, sim_arch(cfg))


def test_roofline_tensor_parallel_divides_work_and_adds_allreduces():
    cfg = RunConfig()
    cfg.model.hidden_size, cfg.model.intermediate_size, cfg.model.num_heads = 4096, 11008, 32
    cfg.model.num_kv_heads, cfg.model.vocab_size, cfg.model.dtype = 32, 32000, "float16"
    arch = sim_arch(cfg)
    hw = HardwareConfig(name="x", peak_tflops=100, mem_bw_gbps=1000, gemm_tile=1, tp=1)
    one = RooflineCosts(arch, "float16", hw)
    four = RooflineCosts(arch, "float16", HardwareConfig(**{**hw.__dict__, "tp": 4}))
    assert four.linear(2048) == pytest.approx(one.linear(2048) / 4, rel=0.02)
    assert one.allreduces_per_layer == 0 and four.allreduces_per_layer == 2
    b = BatchShape(2048, 1, [(2048, 0)], [], 1, 200)
    assert four.layer_time(b) > one.layer_time(b) / 4  # all-reduces are not free


def test_roofline_gemm_tile_quantisation():
    arch = sim_arch(RunConfig())
    hw = HardwareConfig(peak_tflops=100, mem_bw_gbps=1e6, gemm_tile=128)
    m = RooflineCosts(arch, "float16", hw)
    assert m.linear(129) == pytest.approx(m.linear(256))
    assert m.linear(257) > m.linear(256) * 1.4


CONF = Path(__file__).resolve().parents[1] / "conf"


def _preset(group: str, name: str) -> dict:
    import yaml

    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


def test_roofline_a6000_llama13b_against_paper_table2():
    """Independent check of the shipped presets (not a fit): conf/hardware/a6000.yaml and
    conf/model/llama-13b.yaml against paper Table 2 on one A6000 (fp16)."""
    cfg = RunConfig()
    for k, v in _preset("model", "llama-13b").items():
        setattr(cfg.model, k, v)
    hw = HardwareConfig(**_preset("hardware", "a6000"))
    assert cfg.model.num_layers == 40 and hw.name == "a6000"
    m = RooflineCosts(sim_arch(cfg), "float16", hw)
    prefill = m.stage_times(BatchShape(1024, 1, [(1024, 0)], [], 1, 0), [40]).compute[0]
    decode = m.stage_times(BatchShape(4, 4, [], [1024] * 4, 4, 0), [40]).compute[0]
    hybrid = m.stage_times(BatchShape(1024, 4, [(1021, 0)], [1024] * 3, 4, 0), [40]).compute[0]
    assert prefill == pytest.approx(0.2348, rel=0.3)
    assert decode == pytest.approx(0.04996, rel=0.3)
    assert hybrid == pytest.approx(0.2384, rel=0.3)


# ---------------------------------------------------------------------------------------
# Workload and simulate
# ---------------------------------------------------------------------------------------


def test_sim_requests_match_the_real_synthetic_workload():
    cfg = tiny_cfg(num_requests=50, arrival="poisson", qps=3.0, seed=4)
    real = load_workload(cfg.workload, 256, (2,))
    sim = sim_requests(cfg.workload, 256, (2,))
    assert [(len(r.prompt_token_ids), r.max_tokens, r.arrival_time) for r in real] == \
        [(len(r.prompt_token_ids), r.max_tokens, r.arrival_time) for r in sim]
    p = PlaceholderTokens(10, 5)
    assert p[2:6] == [5] * 4 and (p + [7, 8])[8:12] == [5, 5, 7, 8] and len(p + [1]) == 11


def _key_paths(d, prefix=""):
    out = set()
    if isinstance(d, dict):
        for k, v in d.items():
            out.add(prefix + str(k))
            if k not in ("config", "sim", "cost_model"):  # cost_model: each predictor describes itself
                out |= _key_paths(v, prefix + str(k) + ".")
    elif isinstance(d, list) and d and isinstance(d[0], dict):
        out |= _key_paths(d[0], prefix + "[].")
    return out


def test_simulate_gives_results_with_the_same_keys_as_a_real_run(tiny_profile, tmp_path, monkeypatch):
    from pp_sarathi.runtime.prepare import prepare
    from pp_sarathi.runtime.launch import serve_local

    monkeypatch.setenv("PP_SARATHI_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg()
    real_out = serve_local(prepare(cfg))
    real = summarize(real_out, {})
    sim_cfg = copy.deepcopy(cfg)
    sim_cfg.sim.profile = str(tiny_profile)
    sim_out = run_simulation(sim_cfg)
    sim = simulation_results(sim_out, {})
    assert _key_paths(real) <= _key_paths(sim)
    assert _key_paths(sim) - _key_paths(real) == {"sim"}
    # Same scheduler, same workload, timing-independent (static arrivals): same batches, tokens.
    assert [(b.num_prefill_tokens, b.num_decode_tokens) for b in real_out.batches] == \
        [(b.num_prefill_tokens, b.num_decode_tokens) for b in sim_out.batches]
    assert sim["throughput"]["decode_tokens"] == real["throughput"]["decode_tokens"]
    assert sim["requests"]["finish_reasons"] == {"length": cfg.workload.num_requests}
    assert all(2 not in s.output_token_ids for s in sim_out.sequences)  # never EOS
    # Stage records for every stage and micro-batch, compute after receive.
    assert len(sim_out.stage_records) == len(sim_out.batches)
    assert sim["wall_s"] > 0 and sim["sim"]["cost_model"]["source"] == "profile"


@pytest.mark.parametrize("scheduler", ["orca", "vllm", "ft", "sarathi", "sarathi_serve"])
def test_simulate_pipeline_every_scheduler(scheduler):
    cfg = tiny_cfg(num_requests=12)
    cfg.scheduler.name = scheduler
    cfg.parallel.pp = 2
    cfg.hardware = HardwareConfig(name="a100", peak_tflops=312, mem_bw_gbps=2039, gemm_tile=128)
    out = run_simulation(cfg)
    res = simulation_results(out, {})
    assert res["requests"]["finish_reasons"] == {"length": 12}
    assert len(res["stages"]) == 2 and len(out.stage_records) == 2 * len(out.batches)
    for r in out.stage_records:
        assert r.recv_start <= r.recv_end <= r.compute_start <= r.compute_end <= r.send_end
    assert res["sim"]["cost_model"]["source"] == "roofline"


def test_simulate_compare_ratios():
    cfg = tiny_cfg(num_requests=16)
    cfg.parallel.pp = 2
    cfg.hardware = HardwareConfig(name="a100", peak_tflops=312, mem_bw_gbps=2039, gemm_tile=128)
    summary = simulate_compare(cfg, ["orca", "sarathi"], "orca")
    assert set(summary["schedulers"]) == {"orca", "sarathi"}
    r = summary["ratios"]
    assert {"bubble_total", "bubble_per_request_p50", "throughput"} <= set(r)
    o, s = summary["schedulers"]["orca"], summary["schedulers"]["sarathi"]
    assert r["throughput"] == pytest.approx(s["throughput"]["tokens_per_s"] / o["throughput"]["tokens_per_s"])
    assert r["bubble_total"] == pytest.approx(o["bubble"]["total_s"] / s["bubble"]["total_s"])
    assert r["bubble_per_request_p50"] == pytest.approx(o["bubble"]["per_request_ms"]["p50"]
                                                        / s["bubble"]["per_request_ms"]["p50"])


def test_compare_ratios_handles_zero_bubbles():
    res = {"orca": {"bubble": {"total_s": 2.0, "per_request_ms": {"p50": 4.0}}, "throughput": {"tokens_per_s": 10.0}},
           "sarathi": {"bubble": {"total_s": 0.0, "per_request_ms": {"p50": 1.0}}, "throughput": {"tokens_per_s": 15.0}}}
    r = compare_ratios(res, "orca")
    assert r["bubble_total"] is None and r["bubble_per_request_p50"] == 4.0 and r["throughput"] == 1.5


@pytest.mark.slow
def test_paper_scale_simulation_finishes_every_request():
    """GPT-3 TP8 x PP8, 10K requests, SARATHI: every request runs to its length, on every stage
    (how long the simulation takes is a benchmark's business, not a test's)."""
    cfg = RunConfig()
    for k, v in dict(vocab_size=50257, hidden_size=12288, intermediate_size=32768, num_layers=96, num_heads=96,
                     num_kv_heads=96, max_position_embeddings=4096, dtype="float16").items():
        setattr(cfg.model, k, v)
    cfg.hardware = HardwareConfig(name="a100-80gb", peak_tflops=312, mem_bw_gbps=2039, memory_gb=80,
                                  gemm_tile=128, kernel_overhead_us=2, tp=8, tp_allreduce_bw_gbps=240,
                                  pp_link_bw_gbps=25)
    cfg.parallel.pp = 8
    w = cfg.workload
    w.num_requests, w.min_len, w.max_len, w.pd_ratio, w.zipf_theta = 10000, 1024, 4096, 10, 0.4
    cfg.scheduler.name, cfg.scheduler.chunk_size, cfg.scheduler.max_batch_size = "sarathi", 256, 216
    cfg.scheduler.tile_size = 128
    out = run_simulation(cfg)
    assert sum(1 for s in out.sequences if s.finish_reason == "length") == 10000
    assert len(out.stage_records) == 8 * len(out.batches)


def test_profile_writes_held_out_errors_next_to_the_csv(tiny_profile):
    import json
    errs = json.loads(tiny_profile.with_name("profile_errors.json").read_text())
    assert {"linear", "stage", "all"} <= set(errs) and errs["all"]["held_out"] > 10


def test_fidelity_rebuilds_the_run_config_from_results(tmp_path):
    from dataclasses import asdict

    from pp_sarathi.sim.fidelity import run_config_from_dict

    cfg = tiny_cfg(num_requests=9)
    cfg.scheduler.name, cfg.parallel.pp = "orca", 2
    back = run_config_from_dict(asdict(cfg))
    assert back == cfg


def test_fidelity_simulates_with_the_callers_sim_settings(tiny_profile, tmp_path, monkeypatch):
    """A real run's own (resolved) sim.* settings do not choose the cost model's statistic."""
    import json
    from dataclasses import asdict

    from pp_sarathi.sim import fidelity
    from pp_sarathi.config import SimConfig

    cfg = tiny_cfg(num_requests=4)
    cfg.sim.profile_statistic = "min"  # what the real run happened to be started with
    real = simulation_results(run_simulation(_with_profile(cfg, tiny_profile)), asdict(cfg))
    (tmp_path / "results.json").write_text(json.dumps(real))
    seen = []
    orig = fidelity.run_simulation
    monkeypatch.setattr(fidelity, "run_simulation", lambda c, **kw: seen.append(copy.deepcopy(c.sim)) or orig(c, **kw))
    rep = fidelity.fidelity_report(tmp_path, tiny_profile, SimConfig(jitter=0.0))
    assert seen[0].profile_statistic == "median" and seen[0].jitter == 0.0
    assert rep[cfg.scheduler.name]["error"]["wall_s"] is not None


def test_fidelity_over_repeats_measures_against_the_median_real_run(tiny_profile, tmp_path):
    import json
    from dataclasses import asdict

    from pp_sarathi.sim.fidelity import fidelity_over_repeats
    from pp_sarathi.config import SimConfig

    cfg = tiny_cfg(num_requests=4)
    cfg.sim.jitter = 0.0
    base = simulation_results(run_simulation(_with_profile(cfg, tiny_profile)), asdict(cfg))
    dirs = []
    for k, scale in enumerate((1.1, 1.0, 0.8)):  # three "real" runs: slower, as simulated, faster
        r = copy.deepcopy(base)
        r["wall_s"] *= scale
        r["throughput"]["tokens_per_s"] /= scale
        d = tmp_path / f"r{k}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(r))
        dirs.append(d)
    rep = fidelity_over_repeats(dirs, tiny_profile, SimConfig(jitter=0.0))[cfg.scheduler.name]
    assert rep["repeats"] == 3
    assert rep["error"]["wall_s"] == pytest.approx(0.0, abs=1e-9)  # the median run is the simulation's twin
    assert rep["real_spread"]["wall_s"] == pytest.approx([-0.2, 0.1])
    assert rep["error_per_run"][0]["wall_s"] == pytest.approx(1 / 1.1 - 1)
    both = fidelity_over_repeats(dirs, [tiny_profile, tiny_profile], SimConfig(jitter=0.0))[cfg.scheduler.name]
    assert len(both["sim_per_profile"]) == 2 and both["sim"]["wall_s"] == pytest.approx(rep["sim"]["wall_s"])
    with pytest.raises(ValueError, match="at least one"):
        fidelity_over_repeats([], tiny_profile)


def test_engine_replay_of_a_runs_own_compute_reproduces_it(tiny_profile, tmp_path):
    """Replaying recorded compute times through the engine gives back the recorded run."""
    import json
    from dataclasses import asdict

    from pp_sarathi.cli.simulate import write_sim_artifacts
    from pp_sarathi.config import SimConfig
    from pp_sarathi.sim import fidelity
    from pp_sarathi.sim.fidelity import engine_replay_error

    cfg = tiny_cfg(num_requests=6)
    cfg.parallel.pp, cfg.sim.jitter = 2, 0.3  # a jittery "real" run: the cost model alone cannot reproduce it
    out = run_simulation(_with_profile(cfg, tiny_profile))
    results = simulation_results(out, asdict(cfg))
    write_sim_artifacts(out, results, {"logging": {"trace": False, "timeline": False}}, tmp_path, 0)
    replayed = engine_replay_error(tmp_path, tiny_profile, SimConfig(jitter=0.0))
    assert all(abs(v) < 1e-9 for v in replayed.values()), replayed
    _, _, modelled = fidelity._simulate(tmp_path, str(tiny_profile), SimConfig(jitter=0.0))
    assert modelled["wall_s"] != pytest.approx(results["wall_s"], rel=1e-6)


def _with_profile(cfg, profile):
    c = copy.deepcopy(cfg)
    c.sim.profile = str(profile)
    return c


def test_measure_link_times_the_runtime_transport_between_real_stages():
    """Two gloo processes run the runtime's driver and stage loops over real (tiny) stages."""
    from pp_sarathi.sim.profile import measure_link

    cfg = tiny_cfg()
    cfg.parallel.pp = 2
    res = measure_link(cfg, shapes=[(0, 3), (16, 2)], batches=12, timeout_s=120)
    assert set(res) == {"0,3", "16,2"}
    for ivs in res.values():
        # every micro-batch after the first three: what each stage's send cost it
        assert len(ivs["send_first"]) == 9 and len(ivs["send_last"]) == 9
        # the last stage found the data there or waited for it (or asked while it was being sent)
        assert 1 <= len(ivs["recv"]) + len(ivs["hop"]) <= 9
        assert all(0.0 <= x < 5.0 for v in ivs.values() for x in v)


def test_simulated_planner_can_plan_like_a_real_run():
    """Given a probe's terms, sarathi_uniform's simulated planner plans on them and refits them
    to the simulated stage-0 compute every 32 micro-batches, as the runtime does; the
    simulation's own cost model still sets the times."""
    from pp_sarathi.sim.simulate import run_simulation

    cfg = RunConfig()
    cfg.command = "simulate"
    cfg.scheduler.name = "sarathi_uniform"
    cfg.parallel.pp = 2
    cfg.workload.num_requests = 32
    probe = {"weights": 1e-3, "per_token": 5e-5, "per_pair": 1e-8, "per_decode_key": 1e-7, "per_part": 0.0}
    out = run_simulation(cfg, planner_coef=probe)
    pred = out.predictor
    assert pred["source"] == "probe" and pred["observations"] == len(out.batches)
    assert pred["refits"] == len(out.batches) // 32 > 0
    assert pred["cost_model"]["probe_coef_s"] == probe
    plain = run_simulation(cfg)
    assert plain.predictor["source"] == "roofline" and plain.predictor["refits"] == 0


def test_link_probe_binds_its_ranks_as_the_runtime_binds_stages(monkeypatch):
    """The transport probe's ranks get the cores the runtime would give its stages (one each
    where they fit, none with bind_cores=off): unbound, a rank could share a core with the
    other's compute and time that wait as the cost of a receive."""
    from pp_sarathi.sim.profile import link

    seen = []
    monkeypatch.setattr(link, "run_workers", lambda kind, world, arg, timeout_s: seen.append(arg) or {})
    monkeypatch.setattr("pp_sarathi.runtime.cores.usable_cpus", lambda: [4, 5, 6])
    cfg = tiny_cfg()
    cfg.parallel.pp = 2
    link.measure_link(cfg)
    cfg.parallel.bind_cores = "off"
    link.measure_link(cfg)
    assert seen[0]["cores"] == [[4], [5]] and seen[1]["cores"] is None
