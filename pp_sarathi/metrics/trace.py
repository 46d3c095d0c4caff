"""Chrome/Perfetto trace: one track per stage, one slice per micro-batch phase, and the
driver's own work on a track of its own."""
from __future__ import annotations

import json
from pathlib import Path

from .records import RunOutcome


def trace_events(out: RunOutcome) -> list[dict]:
    kinds = {b.batch_id: b for b in out.batches}
    events: list[dict] = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "pipeline"}}]
    for s in range(out.num_stages):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": s, "args": {"name": f"stage {s}"}})
    if out.driver_spans:
        tid = out.num_stages
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": "driver"}})
        events += [{"name": d.kind, "cat": "driver", "ph": "X", "pid": 0, "tid": tid, "ts": d.start * 1e6,
                    "dur": (d.end - d.start) * 1e6} for d in out.driver_spans if d.end > d.start]
    for r in out.stage_records:
        b = kinds.get(r.batch_id)
        args = {"batch": r.batch_id}
        if b is not None:
            args.update(kind=b.kind, requests=b.num_requests, prefill_tokens=b.num_prefill_tokens,
                        decode_tokens=b.num_decode_tokens)
        for phase, start, end in (("recv_wait", r.recv_start, r.recv_end),
                                  ("compute", r.compute_start, r.compute_end),
                                  ("send", r.send_start, r.send_end)):
            if end > start:
                name = f"{phase} {b.kind if (b and phase == 'compute') else ''} #{r.batch_id}".replace("  ", " ")
                events.append({"name": name, "cat": phase, "ph": "X", "pid": 0, "tid": r.stage,
                               "ts": start * 1e6, "dur": (end - start) * 1e6, "args": args})
    return events


def write_trace(out: RunOutcome, path: Path) -> None:
    path.write_text(json.dumps({"traceEvents": trace_events(out), "displayTimeUnit": "ms"}))
