"""The stage-bubble what-if replays a run's own micro-batches (pp_sarathi/sim/whatif.py)."""
from __future__ import annotations

import json

import pytest

from pp_sarathi.sim.whatif import replay, stage_bubble_whatif, transport_medians, variant_times


def _timeline(c0: float, c1: float, n: int, predicted=None, hop: float = 0.0, back: float = 0.0) -> dict:
    """A 2-stage run, two micro-batches in flight, stage 1 slower: micro-batch k + 2 starts on
    stage 0 ``back`` after stage 1 finishes k; a hop takes ``hop``."""
    free0 = free1 = 0.0
    done, recs, batches = [], [], []
    for k in range(n):
        ready = done[k - 2] + back if k >= 2 else 0.0
        s0 = max(free0, ready)
        idle0, free0 = free0, s0 + c0  # stage 0 waits for its next plan from when it is free
        s1 = max(free1, free0 + hop)
        recs.append(dict(stage=0, batch_id=k, recv_start=idle0, recv_end=s0, compute_start=s0, compute_end=free0,
                         send_start=free0, send_end=free0))
        recs.append(dict(stage=1, batch_id=k, recv_start=free1, recv_end=s1, compute_start=s1, compute_end=s1 + c1,
                         send_start=s1 + c1, send_end=s1 + c1))
        free1 = s1 + c1
        done.append(free1)
        batches.append(dict(batch_id=k, scheduled_at=ready, done_at=free1,
                            predicted_stage_s=list(predicted or (c0, c1))))
    return {"num_stages": 2, "batches": batches, "stage_records": recs}


def test_recorded_replay_reproduces_the_waits_and_balancing_removes_them():
    t = _timeline(0.010, 0.012, 6)
    times = variant_times(t)
    rec = replay(t, times["recorded"])
    # Stage 0 waits 2 ms for every micro-batch from the third on (stage 1 is 2 ms slower).
    assert rec["stage_bubble_s"][0] == pytest.approx(4 * 0.002)
    assert rec["stage_bubble_s"][1] == pytest.approx(0.0, abs=1e-12)
    assert rec["wall_s"] == pytest.approx(0.082)
    # Balanced: 11 ms on each stage, nothing waits and the run ends sooner.
    bal = replay(t, times["balanced"])
    assert bal["stage_bubble_s"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert bal["wall_s"] == pytest.approx(0.077)
    # Times that equal their plan change nothing when the noise is taken out.
    assert replay(t, times["planned"])["stage_bubble_s"] == pytest.approx(rec["stage_bubble_s"])


def test_replay_measures_the_run_s_own_hop_and_return():
    t = _timeline(0.010, 0.012, 8, hop=0.0005, back=0.0007)
    tr = transport_medians(t)
    assert tr.transfer == [pytest.approx(0.0005)] and tr.ret == pytest.approx(0.0007)
    assert tr.recv == [0.0, pytest.approx(0.0)]
    rec = replay(t, variant_times(t)["recorded"])
    last = max(r["compute_end"] for r in t["stage_records"])
    assert rec["wall_s"] == pytest.approx(last + 0.0007)  # the last tokens' way back included
    # Stage 0 first waits out the pipeline's first round trip (third micro-batch: 23.2 - 20 ms),
    # then the slower stage 1 sets the pace: 2 ms a micro-batch, the transport hidden.
    assert rec["stage_bubble_s"][0] == pytest.approx(0.0032 + 5 * 0.002)
    assert rec["stage_bubble_s"][1] == pytest.approx(0.0, abs=1e-12)


def test_a_wait_for_arrivals_stays_in_the_replay():
    """A run whose driver idled 50 ms for requests before its fifth micro-batch: the replay keeps
    that wait (balancing cannot start work that had not arrived yet)."""
    t = _timeline(0.010, 0.012, 6)
    late = t["batches"][4]
    late["scheduled_at"] += 0.050
    for r in t["stage_records"]:  # everything from the fifth micro-batch on moves with it
        if r["batch_id"] >= 4:
            for key in ("recv_end", "compute_start", "compute_end", "send_start", "send_end"):
                r[key] += 0.050
    for b in t["batches"][4:]:
        b["done_at"] += 0.050
    t["batches"][5]["scheduled_at"] += 0.050
    times = variant_times(t)
    assert replay(t, times["recorded"])["wall_s"] == pytest.approx(0.082 + 0.050)
    assert replay(t, times["balanced"])["wall_s"] >= 0.050 + 0.070


def test_a_micro_batch_planned_on_a_later_return_waits_for_that_one():
    """At the end of a run the pipeline runs half empty: the third micro-batch could only be
    planned once the second came back (its requests were in it), not the first."""
    rec = []
    for k, (s0, s1) in enumerate([(0.0, 0.010), (0.010, 0.022), (0.034, 0.044)]):
        rec.append(dict(stage=0, batch_id=k, recv_start=s0, recv_end=s0, compute_start=s0, compute_end=s0 + 0.010,
                        send_start=s0 + 0.010, send_end=s0 + 0.010))
        rec.append(dict(stage=1, batch_id=k, recv_start=s1, recv_end=s1, compute_start=s1, compute_end=s1 + 0.012,
                        send_start=s1 + 0.012, send_end=s1 + 0.012))
    batches = [dict(batch_id=0, scheduled_at=0.0, done_at=0.022, predicted_stage_s=[0.010, 0.012]),
               dict(batch_id=1, scheduled_at=0.0, done_at=0.034, predicted_stage_s=[0.010, 0.012]),
               dict(batch_id=2, scheduled_at=0.034, done_at=0.056, predicted_stage_s=[0.010, 0.012])]
    t = {"num_stages": 2, "batches": batches, "stage_records": rec}
    assert replay(t, variant_times(t)["recorded"])["wall_s"] == pytest.approx(0.056)


def test_planned_variant_keeps_each_stage_speed_but_not_its_noise():
    # Planned equal, recorded 10 % slower on stage 1: the planned variant scales the plan by
    # each stage's own recorded / predicted ratio.
    t = _timeline(0.010, 0.011, 4, predicted=(0.010, 0.010))
    times = variant_times(t)
    assert times["planned"][(0, 1)] == pytest.approx(0.010)
    assert times["planned"][(1, 1)] == pytest.approx(0.011)
    assert times["balanced"][(1, 1)] == pytest.approx(0.011)  # nothing planned to balance


def test_whatif_reads_a_run_dir_and_skips_one_stage(tmp_path):
    t = _timeline(0.010, 0.012, 6)
    (tmp_path / "timeline.json").write_text(json.dumps(t))
    real = {"config": {"scheduler": {"name": "sarathi_uniform"}}, "wall_s": 0.082,
            "stages": [{"bubble_s": 0.008, "bubble_fraction": 0.008 / 0.068}, {"bubble_s": 0.0, "bubble_fraction": 0.0}]}
    (tmp_path / "results.json").write_text(json.dumps(real))
    rep = stage_bubble_whatif(tmp_path)
    assert rep["variants"]["recorded"]["stage_bubble"][0] == pytest.approx(0.008 / 0.068)
    assert rep["hop_s"] == [pytest.approx(0.0)]
    t["num_stages"] = 1
    (tmp_path / "timeline.json").write_text(json.dumps(t))
    assert stage_bubble_whatif(tmp_path) is None
