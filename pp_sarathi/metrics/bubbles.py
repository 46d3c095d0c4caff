"""Pipeline bubble accounting from per-stage timelines (definitions in docs/guide.md).

* Stage bubble: time a stage is idle between its first and last compute while the pipeline
  holds at least one in-flight micro-batch.
* Micro-batch bubble: for each stage, (a) the idle gap the stage had right before computing
  this micro-batch (the stage waited for it) plus (b) the time this micro-batch was ready for
  the stage but the stage was computing other micro-batches. A request's bubble is the sum over
  every micro-batch it was in.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

from .records import StageRecord

Interval = tuple[float, float]


def merge(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


class Coverage:
    """Merged, sorted intervals with prefix sums: how much of any span they cover, in O(log n)."""

    def __init__(self, intervals: list[Interval]):
        merged = merge(intervals)
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]
        self._before = [0.0]  # covered length before interval i
        for a, b in merged:
            self._before.append(self._before[-1] + b - a)

    def _upto(self, x: float) -> float:
        i = bisect.bisect_right(self._starts, x)
        if i == 0:
            return 0.0
        return self._before[i - 1] + min(x, self._ends[i - 1]) - self._starts[i - 1]

    def overlap(self, span: Interval) -> float:
        s, e = span
        return max(0.0, self._upto(e) - self._upto(s)) if e > s else 0.0


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Intersection of two merged, sorted interval lists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """``a`` minus ``b`` (both merged and sorted)."""
    out, j = [], 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k, cur = j, s
        while k < len(b) and b[k][0] < e:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def overlap(span: Interval, merged: list[Interval]) -> float:
    """Length of ``span`` covered by the intervals."""
    return Coverage(merged).overlap(span)


@dataclass
class BubbleReport:
    stage_bubble_s: dict[int, float]
    stage_span_s: dict[int, float]
    batch_bubble_s: dict[int, float]  # micro-batch id -> bubble summed over stages
    stage_gap_s: dict[tuple[int, int], float]  # (stage, micro-batch id) -> idle gap right before it
    stage_causes_s: dict[int, dict[str, float]]  # stage -> {driver, imbalance, transport} seconds


CAUSES = ("driver", "imbalance", "transport")


def account(records: list[StageRecord], inflight: list[Interval],
            ready_at_stage0: dict[int, float], driver_busy: list[Interval] = ()) -> BubbleReport:
    """``inflight``: per micro-batch (scheduled, done) spans; ``ready_at_stage0``: when each
    micro-batch's plan was ready for the first stage; ``driver_busy``: the driver's work."""
    busy_pipe = Coverage(inflight)
    pipe_merged = merge(inflight)
    driver_iv = intersect(merge(list(driver_busy)), pipe_merged)
    driver = Coverage(driver_iv)
    compute_by_stage: dict[int, list[Interval]] = defaultdict(list)
    for r in records:
        compute_by_stage[r.stage].append((r.compute_start, r.compute_end))
    by_stage: dict[int, list[StageRecord]] = defaultdict(list)
    for r in records:
        by_stage[r.stage].append(r)
    end_at: dict[tuple[int, int], float] = {(r.stage, r.batch_id): r.compute_end for r in records}
    stage_bubble, stage_span = {}, {}
    stage_gap: dict[tuple[int, int], float] = {}
    batch_bubble: dict[int, float] = defaultdict(float)
    stage_causes: dict[int, dict[str, float]] = {}
    for stage, recs in sorted(by_stage.items()):
        recs.sort(key=lambda r: r.compute_start)
        busy = Coverage([(r.compute_start, r.compute_end) for r in recs])
        others = merge([iv for s, ivs in compute_by_stage.items() if s != stage for iv in ivs])
        # idle-but-in-flight time when another stage computes and the driver does not
        elsewhere = Coverage(subtract(intersect(others, pipe_merged), driver_iv))
        total = 0.0
        causes = dict.fromkeys(CAUSES, 0.0)
        for prev, cur in zip([None] + recs[:-1], recs):
            ready = (ready_at_stage0.get(cur.batch_id, cur.compute_start) if stage == 0
                     else end_at.get((stage - 1, cur.batch_id), cur.compute_start))
            if prev is not None:
                span = (prev.compute_end, cur.compute_start)
                gap = busy_pipe.overlap(span)
                stage_gap[(stage, cur.batch_id)] = gap
                total += gap
                batch_bubble[cur.batch_id] += gap
                waiting = (span[0], min(span[1], max(span[0], ready)))
                by_driver = driver.overlap(span)
                by_others = elsewhere.overlap(waiting)
                causes["driver"] += by_driver
                causes["imbalance"] += by_others
                causes["transport"] += max(0.0, gap - by_driver - by_others)
            if cur.compute_start > ready:
                batch_bubble[cur.batch_id] += busy.overlap((ready, cur.compute_start))
        stage_bubble[stage] = total
        stage_causes[stage] = causes
        stage_span[stage] = recs[-1].compute_end - recs[0].compute_start if recs else 0.0
    for r in records:
        batch_bubble.setdefault(r.batch_id, 0.0)
    return BubbleReport(stage_bubble, stage_span, dict(batch_bubble), stage_gap, stage_causes)



def per_request_bubble(report: BubbleReport, members: dict[int, list[int]]) -> dict[int, float]:
    """Request index -> summed bubble of the micro-batches it was in."""
    out: dict[int, float] = defaultdict(float)
    for batch_id, reqs in members.items():
        for r in reqs:
            out[r] += report.batch_bubble_s.get(batch_id, 0.0)
    return dict(out)
