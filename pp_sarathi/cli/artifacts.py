"""Everything a run leaves in its run dir: outputs.jsonl, results.json, timeline.json,
trace.json, timeline.png (and the wandb run); one writer for real and simulated runs."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..metrics.outputs import output_record, write_outputs
from ..metrics.records import BatchRecord, DriverSpan, RunOutcome, StageRecord
from ..metrics.summary import summarize
from ..metrics.trace import write_trace
from ..workload.request import Request

PARTIAL = "outputs.partial.jsonl"


class PartialOutputs:
    """Appends each finished request as it finishes, so a crash keeps what was done."""

    def __init__(self, run_dir: str, with_logprobs: bool):
        self.path = Path(run_dir) / PARTIAL
        self.with_logprobs = with_logprobs
        self.path.write_text("")

    def __call__(self, seqs) -> None:
        with open(self.path, "a") as f:
            for s in seqs:
                f.write(json.dumps({"index": s.index, **output_record(s, self.with_logprobs)}) + "\n")


def window(outcome: RunOutcome, max_batches: int) -> RunOutcome:
    """The outcome restricted to the micro-batches with the ``max_batches`` lowest ids (0 = all)."""
    if max_batches <= 0 or len(outcome.batches) <= max_batches:
        return outcome
    keep = {b.batch_id for b in sorted(outcome.batches, key=lambda b: b.batch_id)[:max_batches]}
    return RunOutcome(sequences=[], batches=[b for b in outcome.batches if b.batch_id in keep],
                      stage_records=[r for r in outcome.stage_records if r.batch_id in keep],
                      num_stages=outcome.num_stages, wall_s=max((b.done_at for b in outcome.batches
                                                                  if b.batch_id in keep), default=0.0),
                      layer_ranges=outcome.layer_ranges, device=outcome.device)


def write_run_artifacts(outcome: RunOutcome, results: dict, config: dict, run_dir: str | Path,
                        title: str, shown: RunOutcome | None = None) -> None:
    """results.json, timeline.json, trace.json, timeline.png (titled ``title``) and the wandb
    run of one finished run, real or simulated. With ``shown`` (a :func:`window` of a long
    simulated run) all but results.json show only its micro-batches and timeline.json says so."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(results, indent=2))
    windowed = shown is not None
    shown = shown if shown is not None else outcome
    timeline = {"num_stages": shown.num_stages, "wall_s": shown.wall_s, "device": shown.device,
                "layer_ranges": shown.layer_ranges, "batches": [asdict(b) for b in shown.batches],
                "stage_records": [r.to_dict() for r in shown.stage_records]}
    if not windowed:  # a real run's driver track (the simulator has none)
        timeline["driver_spans"] = [asdict(s) for s in outcome.driver_spans]
    if windowed:
        timeline["window"] = {"batches": len(shown.batches), "of": len(outcome.batches)}
    (d / "timeline.json").write_text(json.dumps(timeline))
    log_cfg = config.get("logging", {})
    if log_cfg.get("trace", True):
        write_trace(shown, d / "trace.json")
    if log_cfg.get("timeline", True) and shown.stage_records:
        from .plots import write_timeline
        write_timeline(shown, d / "timeline.png", title)
    if log_cfg.get("wandb", {}).get("mode", "disabled") != "disabled":
        from .wandb_log import log_run
        log_run(shown, results, config, d)


def finalize_run(outcome: RunOutcome, config: dict, run_dir: str) -> dict:
    """Write every artifact of a finished (or failed) run; returns results.json's content."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_outputs(outcome.sequences, d / "outputs.jsonl", config.get("sampling", {}).get("logprobs", 0) > 0)
    results = summarize(outcome, config)
    write_run_artifacts(outcome, results, config, d,
                        f"{config.get('scheduler', {}).get('name', '')} pp={outcome.num_stages}")
    (d / PARTIAL).unlink(missing_ok=True)
    return results


def load_timeline(run_dir: str | Path) -> RunOutcome:
    """The timing part of a run back from timeline.json (for plots across runs)."""
    t = json.loads((Path(run_dir) / "timeline.json").read_text())
    return RunOutcome(sequences=[], batches=[BatchRecord(**b) for b in t["batches"]],
                      stage_records=[StageRecord(**r) for r in t["stage_records"]],
                      num_stages=t["num_stages"], wall_s=t["wall_s"],
                      layer_ranges=[tuple(x) for x in t["layer_ranges"]], device=t["device"],
                      driver_spans=[DriverSpan(**d) for d in t.get("driver_spans", [])])


def salvage_outputs(requests: list[Request], run_dir: str, reason: str) -> None:
    """After a crash that took rank 0 down: outputs.jsonl from what finished, errors for the rest."""
    d = Path(run_dir)
    if (d / "outputs.jsonl").exists():
        return
    done = {}
    if (d / PARTIAL).exists():
        for line in (d / PARTIAL).read_text().splitlines():
            rec = json.loads(line)
            done[rec.pop("index")] = rec
    with open(d / "outputs.jsonl", "w") as f:
        for r in requests:
            rec = done.get(r.index) or {"id": r.id, "prompt_token_ids": r.prompt_token_ids,
                                        "output_token_ids": [], "finish_reason": f"error: {reason}"}
            f.write(json.dumps(rec) + "\n")
