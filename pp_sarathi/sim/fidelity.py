"""Fidelity: simulate a finished real run (or compare) with a profile and report the errors.

    fidelity_report(real_dir, profile_csv) -> dict

``real_dir`` is a ``run`` dir (results.json) or a ``compare`` dir (compare.json + one sub-dir
per scheduler). The run's resolved config (results.json ``config``) is rebuilt, pointed at the
profile, and simulated; with static arrivals the scheduler makes exactly the same batches, so
the differences are the cost model's and the event engine's. When the real run's
``timeline.json`` is there, the per-micro-batch compute error is reported too.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..config import RunConfig
from .config import SimConfig
from .simulate import run_simulation, simulation_results


def run_config_from_dict(d: dict, base: RunConfig | None = None) -> RunConfig:
    """A RunConfig with every known key of the (resolved) config dict ``d`` applied."""

    def apply(obj, values: dict):
        for f in dataclasses.fields(obj):
            if f.name not in values:
                continue
            v = values[f.name]
            cur = getattr(obj, f.name)
            if dataclasses.is_dataclass(cur) and isinstance(v, dict):
                apply(cur, v)
            else:
                setattr(obj, f.name, v)
        return obj

    return apply(base or RunConfig(), d)


def _rel(sim: float | None, real: float | None) -> float | None:
    if sim is None or real in (None, 0):
        return None
    return sim / real - 1.0


def _one(run_dir: Path, profile: str, sim_cfg: SimConfig | None) -> dict:
    real = json.loads((run_dir / "results.json").read_text())
    cfg = run_config_from_dict(real.get("config") or {})
    # The simulation settings are the caller's (not whatever the real run was started with).
    cfg.sim = dataclasses.replace(sim_cfg) if sim_cfg is not None else SimConfig()
    cfg.sim.profile = str(profile)
    cfg.sim.compare = False
    cfg.sim.validate_against = None
    out = run_simulation(cfg)
    sim = simulation_results(out, {})
    report = {
        "scheduler": cfg.scheduler.name, "pp": cfg.parallel.pp,
        "real": {"wall_s": real["wall_s"], "tokens_per_s": real["throughput"]["tokens_per_s"],
                 "bubble_total_s": real["bubble"]["total_s"],
                 "bubble_per_request_p50_ms": real["bubble"]["per_request_ms"]["p50"],
                 "compute_s": [s["compute_s"] for s in real["stages"]]},
        "sim": {"wall_s": sim["wall_s"], "tokens_per_s": sim["throughput"]["tokens_per_s"],
                "bubble_total_s": sim["bubble"]["total_s"],
                "bubble_per_request_p50_ms": sim["bubble"]["per_request_ms"]["p50"],
                "compute_s": [s["compute_s"] for s in sim["stages"]]},
    }
    report["cost_model"] = sim["sim"].get("cost_model")
    report["jitter"] = sim["sim"].get("jitter")
    report["error"] = {k: _rel(report["sim"][k], report["real"][k])
                       for k in ("wall_s", "tokens_per_s", "bubble_total_s", "bubble_per_request_p50_ms")}
    report["error"]["compute_s"] = [_rel(a, b) for a, b in zip(report["sim"]["compute_s"], report["real"]["compute_s"])]
    tl = run_dir / "timeline.json"
    if tl.exists():
        t = json.loads(tl.read_text())
        # The simulated compute per stage and micro-batch without its jitter draw (what the
        # cost model predicts, stretched where stages time-share cores).
        factor = getattr(out, "jitter_factor", None) or {}
        sim_rec = {(r.stage, r.batch_id): (r.compute_end - r.compute_start)
                   / (factor[r.batch_id][r.stage] if r.batch_id in factor else 1.0) for r in out.stage_records}
        real_b = {b["batch_id"]: (b["num_prefill_tokens"], b["num_decode_tokens"]) for b in t["batches"]}
        sim_b = {b.batch_id: (b.num_prefill_tokens, b.num_decode_tokens) for b in out.batches}
        errs = [sim_rec[(r["stage"], r["batch_id"])] / (r["compute_end"] - r["compute_start"]) - 1.0
                for r in t["stage_records"]
                if (r["stage"], r["batch_id"]) in sim_rec and r["compute_end"] > r["compute_start"]]
        if errs:
            a = np.asarray(errs)
            report["per_batch_compute_error"] = {
                "same_batches": real_b == sim_b, "count": int(a.size), "median": float(np.median(a)),
                "mean_abs": float(np.abs(a).mean()), "p10": float(np.percentile(a, 10)),
                "p90": float(np.percentile(a, 90))}
    return report


def fidelity_report(real_dir: str | Path, profile: str | Path, sim_cfg: SimConfig | None = None) -> dict:
    """Errors (sim / real - 1) of throughput, wall time and bubbles per scheduler.

    ``sim_cfg``: the simulation settings (profile statistic, jitter, seed...; default: the
    defaults); the workload, scheduler, model and parallelism are the real run's."""
    d = Path(real_dir)
    if (d / "compare.json").exists():
        names = list(json.loads((d / "compare.json").read_text())["schedulers"])
        return {name: _one(d / name, str(profile), sim_cfg) for name in names}
    return {json.loads((d / "results.json").read_text())["config"]["scheduler"]["name"]: _one(d, str(profile), sim_cfg)}
