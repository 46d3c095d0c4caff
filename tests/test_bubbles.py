"""Bubble accounting (DESIGN.md §4) on hand-built stage timelines with known answers."""
from __future__ import annotations

import pytest

from pp_sarathi.metrics.bubbles import account, merge, overlap, per_request_bubble
from pp_sarathi.metrics.records import StageRecord


def rec(stage, batch, start, end, recv_wait=0.0):
    """A stage record computing ``batch`` over [start, end) after ``recv_wait`` s of receiving."""
    return StageRecord(stage=stage, batch_id=batch, recv_start=start - recv_wait, recv_end=start,
                       compute_start=start, compute_end=end, send_start=end, send_end=end)


def pipeline(times, pp):
    """Timeline of a FIFO pipeline: ``times[b][s]`` = compute time of micro-batch b on stage s.

    Like runtime/driver.py, at most ``pp`` micro-batches are in flight: micro-batch b is
    scheduled (ready for stage 0) when micro-batch b - pp comes back from the last stage.
    Returns (records, in-flight spans, ready_at_stage0).
    """
    num_stages = len(times[0])
    end = {}
    records, spans, ready = [], [], {}
    for b, row in enumerate(times):
        ready[b] = end[(b - pp, num_stages - 1)] if b >= pp else 0.0
        for s, dt in enumerate(row):
            arrive = ready[b] if s == 0 else end[(b, s - 1)]
            start = max(arrive, end.get((b - 1, s), 0.0))
            end[(b, s)] = start + dt
            records.append(rec(s, b, start, start + dt))
        spans.append((ready[b], end[(b, num_stages - 1)]))
    return records, spans, ready


# ---- helpers ---------------------------------------------------------------------------------

def test_merge():
    assert merge([]) == []
    assert merge([(5, 6), (0, 1), (0.5, 2), (2, 3), (7, 7), (9, 8)]) == [(0, 3), (5, 6)]  # touching joins
    assert merge([(0, 10), (2, 3), (4, 12)]) == [(0, 12)]
    assert merge([(1, 2), (3, 4)]) == [(1, 2), (3, 4)]


def test_overlap():
    m = merge([(0, 2), (5, 8)])
    assert overlap((1, 6), m) == pytest.approx(2.0)  # [1,2] + [5,6]
    assert overlap((2, 5), m) == 0.0
    assert overlap((-5, 20), m) == pytest.approx(5.0)
    assert overlap((6, 7), m) == pytest.approx(1.0)
    assert overlap((3, 1), m) == 0.0  # empty span
    assert overlap((0, 1), []) == 0.0


# ---- stage and micro-batch bubbles -----------------------------------------------------------

@pytest.mark.parametrize("stages", [2, 3, 4])
def test_equal_stage_times_have_no_bubble_after_fill(stages):
    n = 12
    records, spans, ready = pipeline([[0.5] * stages for _ in range(n)], pp=stages)
    r = account(records, spans, ready)
    assert r.stage_bubble_s == {s: 0.0 for s in range(stages)}
    for b in range(n):  # only the fill: micro-batch b < pp queues behind the b before it at stage 0
        assert r.batch_bubble_s[b] == pytest.approx(0.5 * b if b < stages else 0.0)
    assert r.stage_span_s[0] == pytest.approx(0.5 * n)


def test_one_slow_micro_batch():
    # 2 stages, 2 in flight, 1 s per stage, except micro-batch 1 (say a prefill): 3 s per stage.
    times = [[1, 1], [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]]
    records, spans, ready = pipeline(times, pp=2)
    # stage 0: b0 [0,1] b1 [1,4] b2 [4,5]  idle [5,7]  b3 [7,8] b4 [8,9] b5 [9,10]
    # stage 1: b0 [1,2]  idle [2,4]  b1 [4,7] b2 [7,8] b3 [8,9] b4 [9,10] b5 [10,11]
    assert [(x.stage, x.batch_id, x.compute_start) for x in records if x.batch_id == 3] == [(0, 3, 7), (1, 3, 8)]
    r = account(records, spans, ready)
    assert r.stage_bubble_s == {0: pytest.approx(2.0), 1: pytest.approx(2.0)}
    assert r.stage_span_s == {0: 10, 1: 10}
    assert r.batch_bubble_s == pytest.approx({
        0: 0.0,
        1: 1.0 + 2.0,  # queued behind b0 at stage 0; stage 1 sat idle [2,4] waiting for it
        2: 2.0 + 2.0,  # ready at 2 but stage 0 busy with b1 until 4; same on stage 1 (5 -> 7)
        3: 2.0,  # stage 0 idle [5,7]: b3 could only be scheduled once b1 came back
        4: 0.0,
        5: 0.0,
    })
    # Requests: r0 decodes in b0, b2, b4; r1 in b1, b3, b5; r2 is b1's prompt only.
    members = {0: [0], 1: [1, 2], 2: [0], 3: [1], 4: [0], 5: [1]}
    assert per_request_bubble(r, members) == pytest.approx({0: 4.0, 1: 5.0, 2: 3.0})


def test_uniform_vs_slow_stage_bubble_equals_the_extra_time():
    base = account(*pipeline([[1, 1]] * 6, pp=2))
    for extra in (0.5, 2.0, 7.0):
        slow = account(*pipeline([[1, 1], [1 + extra, 1 + extra]] + [[1, 1]] * 4, pp=2))
        assert sum(base.stage_bubble_s.values()) == 0.0
        assert slow.stage_bubble_s[1] == pytest.approx(extra)  # the next stage waits on the slow one
        assert slow.stage_bubble_s[0] == pytest.approx(extra)  # stage 0 waits for it to come back


def test_slow_stage_only_delays_downstream():
    # b1 is slow on stage 0 only: stage 1 idles [2, 4] waiting for it.
    records = [rec(0, 0, 0, 1), rec(0, 1, 1, 4), rec(1, 0, 1, 2), rec(1, 1, 4, 5)]
    r = account(records, [(0, 2), (0, 5)], {0: 0.0, 1: 1.0})
    assert r.stage_bubble_s == {0: 0.0, 1: pytest.approx(2.0)}
    assert r.batch_bubble_s == {0: 0.0, 1: pytest.approx(2.0)}


def test_gaps_outside_in_flight_periods_are_not_bubbles():
    # b0 runs alone at t=0; nothing is in flight until b1 arrives at t=10.
    records = [rec(0, 0, 0, 1), rec(1, 0, 1, 2), rec(0, 1, 10, 11), rec(1, 1, 11, 12)]
    r = account(records, [(0, 2), (10, 12)], {0: 0.0, 1: 10.0})
    # Only the drain of b0 (stage 0, [1,2]) and the fill of b1 (stage 1, [10,11]) count.
    assert r.stage_bubble_s == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    assert r.batch_bubble_s == {0: 0.0, 1: pytest.approx(2.0)}
    # Without any in-flight span nothing is a bubble.
    assert account(records, [], {0: 0.0, 1: 10.0}).stage_bubble_s == {0: 0.0, 1: 0.0}


def test_idle_while_a_micro_batch_is_in_flight_counts():
    # One stage; b0 comes back late (driver/transfer latency) and b1 is scheduled at 3.
    records = [rec(0, 0, 0, 1), rec(0, 1, 3, 4)]
    r = account(records, [(0, 2.5), (3, 4)], {0: 0.0, 1: 3.0})
    assert r.stage_bubble_s == {0: pytest.approx(1.5)}  # [1, 2.5]; [2.5, 3] nothing in flight
    assert r.batch_bubble_s == {0: 0.0, 1: pytest.approx(1.5)}


def test_receive_wait_is_not_compute_and_does_not_hide_the_gap():
    # Stage 1 blocks in recv from 2 to 4 (sarathi-serve would time that as compute).
    records = [rec(0, 0, 0, 2), rec(0, 1, 2, 4), rec(1, 0, 2, 3), rec(1, 1, 4, 5, recv_wait=1.0)]
    r = account(records, [(0, 3), (0, 5)], {0: 0.0, 1: 0.0})
    assert r.stage_bubble_s[1] == pytest.approx(1.0)  # idle [3, 4] although it was "receiving"


def test_per_request_bubble_sums_over_batches():
    records, spans, ready = pipeline([[1, 1], [2, 2], [1, 1], [1, 1]], pp=2)
    r = account(records, spans, ready)
    members = {0: [0, 1], 1: [2], 2: [0, 1], 3: [2, 3]}
    per_req = per_request_bubble(r, members)
    for req in range(4):
        assert per_req[req] == pytest.approx(sum(r.batch_bubble_s[b] for b, m in members.items() if req in m))
    assert per_request_bubble(r, {99: [5]}) == {5: 0.0}  # unknown batch: no bubble
    assert per_request_bubble(r, {}) == {}


def test_empty_timeline():
    r = account([], [], {})
    assert r.stage_bubble_s == {} and r.batch_bubble_s == {}
