"""How uniform the micro-batches were, and how well their stage times were predicted.

* ``compute_cv``: coefficient of variation (standard deviation / mean) of one stage's compute
  time per micro-batch; ``compute_cv_prefill`` over the micro-batches that carry prefill
  tokens only (a finite workload ends in decode-only micro-batches that no planner can fill).
* predictor error: ``|predicted / measured - 1|`` of every (micro-batch, stage) compute time,
  from the predicted times the scheduler put on each :class:`BatchRecord`.
"""
from __future__ import annotations

import math

from .records import BatchRecord, StageRecord


def cv(values: list[float]) -> float | None:
    """Population standard deviation over mean; None for fewer than two values or a zero mean."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean <= 0:
        return None
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean


def stage_uniformity(records: list[StageRecord], batches: list[BatchRecord], stage: int) -> dict:
    """``compute_cv``, ``compute_cv_prefill`` and ``predicted_compute_s`` of one stage."""
    has_prefill = {b.batch_id: b.num_prefill_tokens > 0 for b in batches}
    mine = [r for r in records if r.stage == stage]
    all_c = [r.compute_end - r.compute_start for r in mine]
    pre_c = [r.compute_end - r.compute_start for r in mine if has_prefill.get(r.batch_id)]
    predicted = [b.predicted_stage_s[stage] for b in batches
                 if b.predicted_stage_s is not None and stage < len(b.predicted_stage_s)]
    return {"compute_cv": cv(all_c), "compute_cv_prefill": cv(pre_c),
            "predicted_compute_s": sum(predicted) if predicted else None}


def prediction_errors(records: list[StageRecord], batches: list[BatchRecord]) -> list[float]:
    """``|predicted / measured - 1|`` per (micro-batch, stage) that has both."""
    pred = {b.batch_id: b.predicted_stage_s for b in batches if b.predicted_stage_s}
    out = []
    for r in records:
        p = pred.get(r.batch_id)
        measured = r.compute_end - r.compute_start
        if p is not None and r.stage < len(p) and measured > 0:
            out.append(abs(p[r.stage] / measured - 1.0))
    return out
