"""results.json: throughput, latency percentiles, per-stage timing and bubbles."""
from __future__ import annotations

import numpy as np

from .records import RunOutcome
from .bubbles import account, per_request_bubble
from .uniformity import prediction_errors, stage_uniformity


def percentiles(values, scale: float = 1.0) -> dict:
    if len(values) == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "count": 0}
    a = np.asarray(values, dtype=np.float64) * scale
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "count": int(a.size)}


def summarize(out: RunOutcome, config: dict | None = None) -> dict:
    seqs = out.sequences
    done = [s for s in seqs if s.finish_reason and not s.finish_reason.startswith("error")]
    # Each prompt token counts once; prefill work redone after a preemption is reported apart.
    prefill_work = sum(b.num_prefill_tokens for b in out.batches)
    prompt_tokens = sum(min(s.prompt_len, s.max_computed) for s in seqs) if seqs else prefill_work
    decode_tokens = sum(len(s.output_token_ids) for s in seqs)
    span = out.wall_s or 1e-9
    ttft = [s.first_token_time - s.arrival_time for s in seqs if s.first_token_time is not None]
    tbt = [b - a for s in seqs for a, b in zip(s.token_times, s.token_times[1:])]
    e2e = [s.finish_time - s.arrival_time for s in done if s.finish_time is not None]

    report = account(out.stage_records, [(b.scheduled_at, b.done_at) for b in out.batches],
                     {b.batch_id: b.scheduled_at for b in out.batches},
                     [(d.start, d.end) for d in out.driver_spans])
    req_bubble = per_request_bubble(report, {b.batch_id: b.request_indices for b in out.batches})
    stages = []
    for s in range(out.num_stages):
        recs = [r for r in out.stage_records if r.stage == s]
        span_s = report.stage_span_s.get(s, 0.0)
        bub = report.stage_bubble_s.get(s, 0.0)
        stages.append({
            "stage": s,
            "layers": list(out.layer_ranges[s]) if s < len(out.layer_ranges) else None,
            "num_batches": len(recs),
            "compute_s": sum(r.compute_end - r.compute_start for r in recs),
            "recv_wait_s": sum(r.recv_end - r.recv_start for r in recs),
            "send_s": sum(r.send_end - r.send_start for r in recs),
            "bubble_s": bub,
            "bubble_fraction": bub / span_s if span_s > 0 else 0.0,
            "bubble_causes_s": report.stage_causes_s.get(s, {}),
            **stage_uniformity(out.stage_records, out.batches, s),
            **out.stage_cpus.get(s, {}),  # threads, cores, cores_bound (real runs)
        })
    bubble_values = [req_bubble.get(s.index, 0.0) for s in seqs if s.token_times]
    reasons: dict[str, int] = {}
    for s in seqs:
        key = "error" if (s.finish_reason or "").startswith("error") else str(s.finish_reason)
        reasons[key] = reasons.get(key, 0) + 1
    kinds: dict[str, int] = {}
    for b in out.batches:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    return {
        "device": out.device,
        "num_stages": out.num_stages,
        "wall_s": out.wall_s,
        "error": out.error,
        "requests": {"total": len(seqs), "finish_reasons": reasons,
                     "preemptions": sum(s.num_preemptions for s in seqs)},
        "throughput": {
            "tokens_per_s": (prompt_tokens + decode_tokens) / span,
            "decode_tokens_per_s": decode_tokens / span,
            "requests_per_s": len(done) / span,
            "prompt_tokens": prompt_tokens,
            "recomputed_tokens": prefill_work - prompt_tokens,
            "decode_tokens": decode_tokens,
        },
        "latency": {"ttft_ms": percentiles(ttft, 1e3), "tbt_ms": percentiles(tbt, 1e3),
                    "e2e_ms": percentiles(e2e, 1e3)},
        "stages": stages,
        "bubble": {
            "total_s": sum(st["bubble_s"] for st in stages),
            "per_request_ms": percentiles(bubble_values, 1e3),
            "per_request_cdf_ms": sorted(v * 1e3 for v in bubble_values),
        },
        "driver": driver_summary(out, span),
        # source, cost_model (the predictor's own description), online_scale, observations
        "predictor": {**(out.predictor or {}),
                      "error": percentiles(prediction_errors(out.stage_records, out.batches))},
        **({"transport": out.transport} if out.transport else {}),
        "batches": {"count": len(out.batches), "by_kind": kinds,
                    "mean_tokens": float(np.mean([b.num_prefill_tokens + b.num_decode_tokens
                                                  for b in out.batches])) if out.batches else 0.0},
        "config": config or {},
    }


def driver_summary(out: RunOutcome, span: float) -> dict:
    """The driver's own work: busy time and how long each kind of call took."""
    by_kind: dict[str, list[float]] = {}
    for d in out.driver_spans:
        by_kind.setdefault(d.kind, []).append(d.end - d.start)
    busy = sum(sum(v) for v in by_kind.values())
    return {"busy_s": busy, "busy_fraction": busy / span if span > 0 else 0.0,
            "schedule_ms": percentiles(by_kind.get("schedule", []), 1e3),
            "results_ms": percentiles(by_kind.get("results", []), 1e3),
            "output_ms": percentiles(by_kind.get("output", []), 1e3)}
