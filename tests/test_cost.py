"""The cost package on hand-made data: shapes, message sizes, the fit, the roofline, the
measured predictor and its held-out error; and that it imports without torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pp_sarathi.config import HardwareConfig
from pp_sarathi.cost import (BatchShape, LinearFit, ProfileCosts, RooflineCosts, StageTimePredictor, holdout_errors,
                             kv_capacity_tokens, weighted_lstsq)
from pp_sarathi.cost.fit import Interp1D, Interp2D
from pp_sarathi.cost.messages import plan_meta_ints
from pp_sarathi.cost.profile_csv import stage_row_shape
from pp_sarathi.model.arch import ModelArch
from pp_sarathi.model.shapes import (canonical_dtype, dtype_bytes, kv_bytes_per_token, linear_params_per_layer,
                                     num_params, params_per_layer)
from pp_sarathi.scheduler import BatchPlan, ScheduledPart

# hidden 8, 2 heads of 4, one KV head (kv_size 4), MLP 16, vocab 100
ARCH = ModelArch.from_shape(vocab_size=100, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
                            num_kv_heads=1)


def test_cost_package_imports_without_torch():
    code = "import sys, pp_sarathi.cost, pp_sarathi.model.shapes; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- model shape arithmetic ---------------------------------------------------------------

def test_model_shape_arithmetic_by_hand():
    assert linear_params_per_layer(ARCH) == 8 * (8 + 2 * 4) + 8 * 8 + 3 * 8 * 16 == 576
    assert params_per_layer(ARCH) == 576 + 16
    assert num_params(ARCH) == ARCH.num_params() == 2 * 592 + 2 * 800 + 8
    assert kv_bytes_per_token(ARCH, 2, layers=2) == 2 * 2 * 4 * 2
    assert dtype_bytes("torch.bfloat16") == 2 and dtype_bytes("fp32") == 4 and canonical_dtype("half") == "float16"
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("int8")


# ---- batch shape and message sizes ----------------------------------------------------------

def _part(start, n, sample=True):
    return ScheduledPart(seq_index=0, start=start, token_ids=[0] * n, block_table=[], is_prefill=n > 1,
                         sample=sample, output_index=0)


def test_batch_shape_from_plan_by_hand():
    # A chunk of 20 over 30 cached (ends at 50: 4 blocks of 16), not sampled; decodes ending at 17 and 5.
    plan = BatchPlan(id=0, parts=[_part(30, 20, sample=False), _part(16, 1), _part(4, 1)])
    b = BatchShape.from_plan(plan, block_size=16)
    assert (b.num_tokens, b.num_parts, b.prefills, b.decode_ctx, b.num_sampled) == (22, 3, [(20, 30)], [17, 5], 2)
    assert b.meta_ints == 2 + (7 + 4) + (7 + 2) + (7 + 1)
    assert BatchShape.of([(20, 30)], [17, 5], num_sampled=2, meta_ints=b.meta_ints) == b


def test_plan_metadata_size_is_what_the_wire_sends():
    from pp_sarathi.runtime.transport import encode_plan

    parts = [_part(30, 20), _part(16, 1)]
    for p in parts:
        p.block_table = list(range(-(-(p.start + p.num_tokens) // 16)))
    assert encode_plan(7, parts).numel() == plan_meta_ints([50, 17], 16)


# ---- fitting -------------------------------------------------------------------------------

def test_weighted_least_squares_recovers_a_known_line():
    xs = [1.0, 2.0, 5.0, 10.0]
    ys = [0.5 + 0.25 * x for x in xs]
    a, b = weighted_lstsq([[1.0, x] for x in xs], ys, [1.0, 2.0, 3.0, 4.0])
    assert a == pytest.approx(0.5) and b == pytest.approx(0.25)
    fit = LinearFit([[1.0, x] for x in xs], ys, ["const", "x"])
    assert fit.coef == pytest.approx([0.5, 0.25]) and fit(1.0, 4.0) == pytest.approx(1.5)
    # The weights choose between inconsistent points: all weight on the first two -> their line.
    c = weighted_lstsq([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], [0.0, 1.0, 5.0], [1.0, 1.0, 1e-9])
    assert c == pytest.approx([0.0, 1.0], abs=1e-6)


def test_interpolation_by_hand():
    f = Interp1D([0, 2, 4], [1.0, 3.0, 4.0])
    assert f(1) == 2.0 and f(3) == 3.5 and f(6) == pytest.approx(5.0)  # beyond: the upper half's slope 0.5
    g = Interp2D([1, 1, 3, 3], [0, 10, 0, 10], [0.0, 10.0, 2.0, 12.0])
    assert g(2, 5) == pytest.approx(6.0)


# ---- roofline ------------------------------------------------------------------------------

# 1e6 FLOP/s and 1e6 B/s, no tiles, no launch cost: every op's time in microseconds is
# max(FLOPs, bytes) and can be written down by hand.
HW = HardwareConfig(peak_tflops=1e-6, mem_bw_gbps=1e-3, flops_efficiency=1.0, mem_efficiency=1.0, gemm_tile=1,
                    kernel_overhead_us=0.0, pp_link_bw_gbps=1e-3, pp_link_latency_us=0.0)


def test_roofline_on_a_hand_computed_shape():
    m = RooflineCosts(ARCH, "float32", HW)
    # Two tokens through (K, N) = (8, 16), (8, 8), (8, 32), (16, 8): memory-bound, bytes =
    # 4 * (K*N + t*K + t*N) = 704 + 384 + 1344 + 704.
    assert m.linear(2) == pytest.approx(3136e-6)
    # Chunk of 3 over 2 cached: 3 * (2 + 2) = 12 query-key pairs, 4 * 12 * 8 = 384 FLOPs;
    # bytes 4 * (5 keys * 2 * 4 + 2 * 3 * 8) = 352.
    assert m.attn_prefill(3, 2) == pytest.approx(384e-6)
    # Decodes at contexts 5 and 7: 12 keys, 384 FLOPs; bytes 4 * (12 * 8 + 2 * 2 * 8) = 512.
    assert m.attn_decode([5, 7]) == pytest.approx(512e-6)
    # One hop of 4 tokens over the wire: 32 B header, 8 * 20 B metadata, 4 * 8 * 4 B hidden states.
    b = BatchShape.of([(3, 2)], [5], meta_ints=20)
    assert m.hop_time(b) == pytest.approx((32 + 160 + 128) * 1e-6)


def test_roofline_is_a_stage_time_predictor():
    m = RooflineCosts(ARCH, "float32", HW)
    assert isinstance(m, StageTimePredictor)
    b = BatchShape.of([(3, 2)], [5, 7])
    t = m.stage_times(b, [1, 2, 1])
    assert [m.stage_seconds(b, 1, first=True), m.stage_seconds(b, 2), m.stage_seconds(b, 1, last=True)] == t.compute
    only = m.stage_seconds(b, 2, first=True, last=True)
    assert only == pytest.approx(2 * m.layer_time(b) + m.overhead(3, 5) + m.embed(5) + m.lm_head(3) + m.sample(3)
                                 - m.last_layer_saving(b))


def test_last_layer_saving_by_hand():
    """The model's last layer runs QKV over every row, the rest over the sampled rows only, and
    those attend as decodes (model/llama.py)."""
    m = RooflineCosts(ARCH, "float32", HW)
    after_qkv = 1 - 8 * (8 + 2 * 4) / 576  # O, gate/up and down: 448 of the layer's 576 weights
    # A chunk of 3 over 2 cached (not sampled) and decodes at 5 and 7: rows 5, sampled 2.
    b = BatchShape.of([(3, 2)], [5, 7], num_sampled=2)
    assert b.sampled_ctx == [5, 7]
    want = after_qkv * (m.linear(5) - m.linear(2)) + m.attn_prefill(3, 2) + m.attn_decode([5, 7]) - m.attn_decode([5, 7])
    assert m.last_layer_saving(b) == pytest.approx(want)
    # Only a non-final chunk: nothing goes on after QKV.
    mid = BatchShape.of([(3, 2)], [], num_sampled=0)
    assert m.last_layer_saving(mid) == pytest.approx(after_qkv * m.linear(3) + m.attn_prefill(3, 2))
    # Every row sampled (decodes only): nothing skipped; only a stage holding the whole model
    # saves (in a pipeline the last stage would idle for it: model/llama.py).
    assert m.last_layer_saving(BatchShape.of([], [5, 7])) == 0.0
    assert m.stage_seconds(b, 2, first=True) - m.stage_seconds(b, 2, first=True, last=True) == pytest.approx(
        m.last_layer_saving(b) - m.lm_head(2) - m.sample(2))
    assert m.stage_seconds(b, 2, last=True) - m.stage_seconds(b, 2) == pytest.approx(m.lm_head(2) + m.sample(2))


def test_kv_capacity_by_hand():
    hw = HardwareConfig(memory_gb=1e-6, tp=1)  # 1000 bytes
    # 0.9 * 1000 - (1 layer * 576 weights + 800 embedding) * 4 B < 0: nothing fits.
    assert kv_capacity_tokens(ARCH, hw, 1, "float32") == 0
    hw = HardwareConfig(memory_gb=1e-5, tp=1)  # 10000 B: (9000 - 5504) // (2 * 4 * 4) = 109
    assert kv_capacity_tokens(ARCH, hw, 1, "float32") == 109


# ---- the measured predictor ----------------------------------------------------------------

SHAPE_COLS = dict(hidden_size=8, intermediate_size=16, num_heads=2, num_kv_heads=1, head_dim=4, vocab_size=100,
                  dtype="float32", device="test", threads=1)


def _row(op, seconds, **cols):
    base = dict(tokens=0, chunk=0, cached=0, batch=0, context=0, bytes=0, prefills=0, layers=0, stage="", jitter=0.0)
    return {**base, **SHAPE_COLS, **cols, "op": op, "seconds": seconds, "seconds_mean": seconds,
            "seconds_min": seconds}


def _op_rows():
    rows = [_row("linear", 1e-3 + 1e-4 * t, tokens=t) for t in range(1, 41)]
    rows += [_row(op, 1e-5 * t, tokens=t) for op in ("embed", "lm_head", "sample") for t in (1, 2, 4, 8, 16, 32)]
    rows += [_row("attn_prefill", 1e-6 * (c + k), chunk=c, cached=k) for c in (8, 16, 32) for k in (0, 64, 128)]
    rows += [_row("attn_decode", 1e-6 * (b + ctx / 16), batch=b, context=ctx) for b in (1, 2, 4, 8)
             for ctx in (16, 64, 256)]
    rows += [_row("overhead", 1e-4 + 2e-5 * p + 1e-7 * t, batch=p, tokens=t) for p, t in
             ((1, 1), (2, 9), (4, 40), (3, 17), (5, 33))]
    return rows


def test_measured_predictor_interpolates_and_fits_the_remainder():
    rows = _op_rows()
    base = ProfileCosts(ARCH, "float32", rows)
    assert base.linear(7) == pytest.approx(1e-3 + 7e-4)
    assert base.attn_prefill(12, 32) == pytest.approx(44e-6)
    assert base.attn_decode([16, 64, 40]) == pytest.approx(1e-6 * (3 + 4))  # padded to the longest
    assert base.overhead(2, 20) == pytest.approx(1e-4 + 4e-5 + 2e-6)
    assert base.misc(10) == 0.0 and base.misc_coef is None
    # Whole stage steps that cost 2e-4 + 3e-6 * T per layer more than the composed ops.
    steps = []
    for c, k, b, ctx, n in ((8, 0, 2, 64, 2), (16, 64, 0, 0, 2), (0, 0, 4, 128, 3), (32, 0, 1, 16, 1),
                            (16, 128, 3, 200, 2)):
        r = _row("stage", 0.0, chunk=c, cached=k, batch=b, context=ctx, prefills=1 if c else 0, layers=n,
                 stage="only", jitter=0.1)
        shape = stage_row_shape(r)
        r["seconds"] = r["seconds_mean"] = base.stage_step(shape, n, "only") + n * (2e-4 + 3e-6 * shape.num_tokens)
        steps.append(r)
    m = ProfileCosts(ARCH, "float32", rows + steps)
    assert m.misc_source == "stage" and m.misc_coef == pytest.approx([2e-4, 3e-6])
    assert m.jitter == pytest.approx(0.1)
    assert m.jitter_at(1e-4) == pytest.approx(0.1) and m.jitter_at(10.0) == pytest.approx(0.1)
    b = BatchShape.of([(8, 0)], [64, 64])
    assert m.stage_seconds(b, 2, first=True, last=True) == pytest.approx(steps[0]["seconds"])


def test_profile_jitter_follows_the_step_duration():
    """Short stage steps vary more than long ones: the simulation draws each step's spread for
    its own duration, as a power law through the profile's stage rows, within their range."""
    rows = _op_rows()
    for i, (b, ctx, jitter) in enumerate(((1, 16, 0.2), (4, 64, 0.1), (8, 256, 0.05), (8, 128, 0.07))):
        rows.append(_row("stage", 1e-3 * 2 ** i, batch=b, context=ctx, layers=1, stage="only", jitter=jitter))
    m = ProfileCosts(ARCH, "float32", rows)
    assert m.jitter_at(1e-3) > m.jitter_at(4e-3) > m.jitter_at(8e-3)
    assert m.jitter_at(1e-6) == pytest.approx(0.2) and m.jitter_at(10.0) == pytest.approx(0.05)
    assert 0.05 < m.jitter < 0.2  # the pooled figure a report shows


def test_held_out_error_of_exact_data_is_zero():
    errs = holdout_errors(_op_rows(), ARCH)
    assert {"linear", "attn_prefill", "attn_decode", "overhead"} <= set(errs)
    assert errs["all"]["held_out"] > 10 and errs["all"]["max_abs_rel_err"] < 1e-6


def test_profile_csv_round_trip_and_statistics(tmp_path):
    from pp_sarathi.cost import read_profile, write_profile
    from pp_sarathi.cost.profile_csv import PROFILE_COLUMNS

    rows = [{**r, "seconds_mean": 2 * r["seconds"], "seconds_min": r["seconds"] / 2} for r in _op_rows()]
    path = write_profile(rows, tmp_path / "p.csv")
    assert path.read_text().splitlines()[0].split(",") == PROFILE_COLUMNS
    back = read_profile(path)
    assert [(r["op"], r["tokens"], r["chunk"], r["batch"]) for r in back] == \
        [(r["op"], r["tokens"], r["chunk"], r["batch"]) for r in rows]
    assert back[0]["seconds"] == pytest.approx(rows[0]["seconds"])
    assert read_profile(path, "mean")[0]["seconds"] == pytest.approx(2 * rows[0]["seconds"])
    assert read_profile(path, "min")[0]["seconds"] == pytest.approx(rows[0]["seconds"] / 2)
    with pytest.raises(ValueError, match="median, mean or min"):
        read_profile(path, "p90")


def test_make_cost_model_picks_the_profile_or_the_roofline(tmp_path):
    from pp_sarathi.config import RunConfig
    from pp_sarathi.cost import make_cost_model, write_profile

    cfg = RunConfig()
    assert isinstance(make_cost_model(cfg, ARCH), RooflineCosts)
    cfg.sim.profile = str(write_profile(_op_rows(), tmp_path / "p.csv"))
    assert isinstance(make_cost_model(cfg, ARCH), ProfileCosts)
    cfg.hardware.tp = 2
    with pytest.raises(ValueError, match="tensor parallelism"):
        make_cost_model(cfg, ARCH)
