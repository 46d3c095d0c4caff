"""What holds a real run's stage bubble: its micro-batches replayed through the event engine,
with their recorded compute times and with parts of those times' variation taken out.

The replay keeps the run's own micro-batches, in their order, and when the driver could plan each
one: once the micro-batch whose return it followed in the run (``k - pp`` in a full pipeline) is
back; the hop between
stages, the receive of a hop already there and the way back to the driver take their median in
the run. Only the per-stage compute changes. With ``p[s]`` the planner's
predicted time of a micro-batch on stage ``s`` and ``c[s]`` the recorded one:

* ``recorded``: ``c[s]``: the replay itself (compare with the run's own figures);
* ``balanced``: ``c[s] * mean(p) / p[s]``: the stages' planned difference (LM head, embedding,
  unequal layers) gone, each stage's own deviation from its plan kept: what a partition
  balanced for every micro-batch (a split LM head, a layer cut in two) would leave;
* ``planned``: ``p[s] * k[s]``, ``k[s]`` the stage's recorded ÷ predicted total: the host's
  step-to-step variation gone, the plan's variation and the stages' difference kept;
* ``planned_balanced``: ``mean(p) * k``: neither; what is left is the schedule's shape (pipeline
  fill, micro-batches of different sizes in a row) and the transport.

Where the run's driver waited for requests to arrive, the replay waits as long (a floor on when
that micro-batch may start). A replay keeps the schedule, so it answers what-ifs that leave the micro-batches as they were
(a finer partition does; more micro-batches in flight does not). Stages that shared cores in the
run (pp=3 on two) keep the slowdown they had there: the replay does not re-share the cores.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import median

from ..cost import StageTimes
from ..metrics.bubbles import account
from .engine import PipelineEngine

VARIANTS = ("recorded", "balanced", "planned", "planned_balanced")
# A micro-batch scheduled this long after the last return before it waited for requests to arrive
# (the driver's own work takes well under a millisecond): a replay keeps that wait as a floor on
# when it may start.
ARRIVAL_WAIT_S = 0.01


def recorded_compute(timeline: dict) -> dict[tuple[int, int], float]:
    """(stage, batch id) -> compute seconds a run recorded (its timeline.json)."""
    return {(r["stage"], r["batch_id"]): r["compute_end"] - r["compute_start"] for r in timeline["stage_records"]}


def variant_times(timeline: dict) -> dict[str, dict[tuple[int, int], float]]:
    """(stage, batch id) -> compute seconds of every variant, from a run's timeline.json."""
    recorded = recorded_compute(timeline)
    planned = {b["batch_id"]: b["predicted_stage_s"] for b in timeline["batches"]
               if b.get("predicted_stage_s") and min(b["predicted_stage_s"]) > 0}
    k = []  # per stage, recorded ÷ predicted over the run: the host's speed against the plan
    for s in range(timeline["num_stages"]):
        pred = sum(p[s] for b, p in planned.items() if (s, b) in recorded)
        k.append(sum(recorded[(s, b)] for b in planned if (s, b) in recorded) / pred if pred > 0 else 1.0)
    k_all = sum(k) / len(k)
    out: dict[str, dict[tuple[int, int], float]] = {name: {} for name in VARIANTS}
    for (s, b), c in recorded.items():
        p = planned.get(b)
        mean = sum(p) / len(p) if p else 0.0
        out["recorded"][(s, b)] = c
        # Nothing planned (a policy without a predictor): the measured time stands.
        out["balanced"][(s, b)] = c * mean / p[s] if p else c
        out["planned"][(s, b)] = p[s] * k[s] if p else c
        out["planned_balanced"][(s, b)] = mean * k_all if p else c
    return out


def _gates(batches: list[dict]) -> list[tuple[int | None, bool]]:
    """Per micro-batch (in scheduling order): the one whose return let the driver schedule it
    (the last to come back before it was scheduled; None for the first ones) and whether the
    driver then still waited for requests to arrive."""
    order = sorted(range(len(batches)), key=lambda i: batches[i]["done_at"])
    out, j, last = [], 0, None
    for b in batches:
        while j < len(order) and batches[order[j]]["done_at"] <= b["scheduled_at"]:
            last, j = order[j], j + 1
        out.append((last, last is not None and b["scheduled_at"] - batches[last]["done_at"] > ARRIVAL_WAIT_S))
    return out


def transport_medians(timeline: dict) -> StageTimes:
    """The run's transport as the event engine takes it (compute left empty), each a median over
    the run: the hop ``s -> s+1`` (upstream compute end to downstream compute start, where the
    downstream stage was waiting for it), the receive of a hop already there (stage ``s``'s
    receive where it started after the upstream compute ended), and the return (last stage's
    compute end to stage 0's start of the micro-batch planned on its return, where stage 0 was waiting:
    the tokens' way back, the driver's scheduling and the hand-over to stage 0; not where the
    driver waited for requests to arrive)."""
    n = timeline["num_stages"]
    rec = {(r["stage"], r["batch_id"]): r for r in timeline["stage_records"]}
    ids = [b["batch_id"] for b in timeline["batches"]]

    def med(xs: list[float]) -> float:
        return median(xs) if xs else 0.0
    hops, recvs = [], [0.0]
    for s in range(n - 1):
        pairs = [(rec[(s, b)], rec[(s + 1, b)]) for b in ids if (s, b) in rec and (s + 1, b) in rec]
        hops.append(med([d["compute_start"] - u["compute_end"] for u, d in pairs
                         if d["recv_start"] < u["compute_end"]]))
        recvs.append(med([d["recv_end"] - d["recv_start"] for u, d in pairs
                          if d["recv_start"] >= u["compute_end"]]))
    batches = sorted(timeline["batches"], key=lambda b: b["scheduled_at"])
    after = [(batches[g]["batch_id"], b["batch_id"]) for b, (g, waited) in zip(batches, _gates(batches))
             if g is not None and not waited]
    back = med([rec[(0, b2)]["compute_start"] - rec[(n - 1, b)]["compute_end"] for b, b2 in after
                if (n - 1, b) in rec and (0, b2) in rec
                and rec[(0, b2)]["compute_start"] > rec[(n - 1, b)]["compute_end"]
                and rec[(0, b2)]["recv_start"] < rec[(n - 1, b)]["compute_end"]])
    return StageTimes([], hops, back, recv=recvs)


def replay(timeline: dict, compute: dict[tuple[int, int], float], transport: StageTimes | None = None) -> dict:
    """Stage bubbles and wall time of the run's micro-batches with these compute times;
    ``transport``: default :func:`transport_medians` of the run."""
    n = timeline["num_stages"]
    tr = transport or transport_medians(timeline)
    engine = PipelineEngine(n)
    batches = sorted(timeline["batches"], key=lambda b: b["scheduled_at"])
    done: list[float] = []
    spans = []
    for b, (gate, waited) in zip(batches, _gates(batches)):
        ready = b["scheduled_at"] if gate is None else done[gate]
        if waited:  # the run's driver waited for requests to arrive: so does the replay
            ready = max(ready, b["scheduled_at"])
        times = StageTimes([compute[(s, b["batch_id"])] for s in range(n)], tr.transfer, tr.ret, recv=tr.recv)
        _, end = engine.push(b["batch_id"], ready, times)
        done.append(end)
        spans.append((ready, end))
    report = account(engine.records, spans, {b["batch_id"]: r for b, (r, _) in zip(batches, spans)})
    return {"wall_s": max(done) - batches[0]["scheduled_at"],
            "stage_bubble_s": [report.stage_bubble_s.get(s, 0.0) for s in range(n)],
            "stage_bubble": [report.stage_bubble_s.get(s, 0.0) / report.stage_span_s[s]
                             if report.stage_span_s.get(s) else 0.0 for s in range(n)]}


def stage_bubble_whatif(run_dir: str | Path) -> dict | None:
    """The real run's stage bubbles and every variant's replay (``run_dir``: results.json and
    timeline.json of a run); None for a one-stage run (no pipeline bubble to replay)."""
    run_dir = Path(run_dir)
    real = json.loads((run_dir / "results.json").read_text())
    timeline = json.loads((run_dir / "timeline.json").read_text())
    if timeline["num_stages"] < 2:
        return None
    tr = transport_medians(timeline)
    return {"run": str(run_dir), "scheduler": real["config"]["scheduler"]["name"],
            "hop_s": tr.transfer, "recv_s": tr.recv, "return_s": tr.ret,
            "real": {"wall_s": real["wall_s"],
                     "stage_bubble_s": [s["bubble_s"] for s in real["stages"]],
                     "stage_bubble": [s["bubble_fraction"] for s in real["stages"]]},
            "variants": {name: replay(timeline, times, tr)
                         for name, times in variant_times(timeline).items()}}
