"""Fidelity: simulate a finished real run (or compare) with a profile and report the errors.

    fidelity_report(real_dir, profile_csv) -> dict            # one real run
    fidelity_over_repeats([real_dir, ...], profile_csv) -> dict  # median of repeated real runs
    engine_replay_error(real_dir, profile_csv) -> dict            # the event engine alone

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

from ..config import RunConfig, SimConfig
from .simulate import run_simulation, simulation_results
from .whatif import recorded_compute


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


METRICS = ("wall_s", "tokens_per_s", "bubble_total_s", "bubble_per_request_p50_ms")


def _metrics(results: dict) -> dict:
    """The compared numbers of one results.json (real or simulated)."""
    return {"wall_s": results["wall_s"], "tokens_per_s": results["throughput"]["tokens_per_s"],
            "bubble_total_s": results["bubble"]["total_s"],
            "bubble_per_request_p50_ms": results["bubble"]["per_request_ms"]["p50"],
            "compute_s": [s["compute_s"] for s in results["stages"]]}


def _simulate(run_dir: Path, profile: str, sim_cfg: SimConfig | None, replay: bool = False):
    """Simulate the real run in ``run_dir`` (its own resolved config) with ``profile``; with
    ``replay``, the run's own recorded compute times replace the cost model's (timeline.json)."""
    real = json.loads((run_dir / "results.json").read_text())
    cfg = run_config_from_dict(real.get("config") or {})
    # The simulation settings are the caller's (not whatever the real run was started with).
    cfg.sim = dataclasses.replace(sim_cfg) if sim_cfg is not None else SimConfig()
    cfg.sim.profile = str(profile)
    cfg.sim.compare = False
    cfg.sim.validate_against = None
    # Plan as the real run planned: on its probed predictor (the probe's own terms, taken at its
    # start-up), refitted online to the simulated stage 0 as the run refitted it to its own.
    model = (real.get("predictor") or {}).get("cost_model") or {}
    planner_coef = (model.get("probe_coef_s") or model.get("coef_s")) if model.get("source") == "probe" else None
    recorded = None
    if replay:
        recorded = recorded_compute(json.loads((run_dir / "timeline.json").read_text()))
    out = run_simulation(cfg, replay=recorded, planner_coef=planner_coef)
    return cfg, out, simulation_results(out, {})


def engine_replay_error(run_dir: Path, profile: str, sim_cfg: SimConfig | None = None) -> dict | None:
    """The event engine alone: simulate the run with its own recorded compute times (transport
    from the profile) and compare with the run. Separates the engine's error from the cost
    model's; needs timeline.json."""
    if not (Path(run_dir) / "timeline.json").exists():
        return None
    real = _metrics(json.loads((Path(run_dir) / "results.json").read_text()))
    _, _, sim = _simulate(Path(run_dir), profile, sim_cfg, replay=True)
    return {k: _rel(_metrics(sim)[k], real[k]) for k in METRICS}


def _per_batch_error(run_dir: Path, out) -> dict | None:
    """Simulated / real - 1 of every stage's compute per micro-batch (needs timeline.json)."""
    tl = run_dir / "timeline.json"
    if not tl.exists():
        return None
    t = json.loads(tl.read_text())
    # The simulated compute per stage and micro-batch without its jitter draw (what the
    # cost model predicts, stretched where stages time-share cores).
    factor = out.sim.jitter_factor if out.sim else {}
    sim_rec = {(r.stage, r.batch_id): (r.compute_end - r.compute_start)
               / (factor[r.batch_id][r.stage] if r.batch_id in factor else 1.0) for r in out.stage_records}
    real_b = {b["batch_id"]: (b["num_prefill_tokens"], b["num_decode_tokens"]) for b in t["batches"]}
    sim_b = {b.batch_id: (b.num_prefill_tokens, b.num_decode_tokens) for b in out.batches}
    errs = [sim_rec[(r["stage"], r["batch_id"])] / (r["compute_end"] - r["compute_start"]) - 1.0
            for r in t["stage_records"]
            if (r["stage"], r["batch_id"]) in sim_rec and r["compute_end"] > r["compute_start"]]
    if not errs:
        return None
    a = np.asarray(errs)
    return {"same_batches": real_b == sim_b, "count": int(a.size), "median": float(np.median(a)),
            "mean_abs": float(np.abs(a).mean()), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90))}


def _one(run_dir: Path, profile: str, sim_cfg: SimConfig | None) -> dict:
    real = json.loads((run_dir / "results.json").read_text())
    cfg, out, sim = _simulate(run_dir, profile, sim_cfg)
    report = {"scheduler": cfg.scheduler.name, "pp": cfg.parallel.pp, "real": _metrics(real), "sim": _metrics(sim)}
    report["cost_model"] = sim["sim"].get("cost_model")
    report["jitter"] = sim["sim"].get("jitter")
    report["error"] = {k: _rel(report["sim"][k], report["real"][k]) for k in METRICS}
    report["error"]["compute_s"] = [_rel(a, b) for a, b in zip(report["sim"]["compute_s"], report["real"]["compute_s"])]
    per_batch = _per_batch_error(run_dir, out)
    if per_batch:
        report["per_batch_compute_error"] = per_batch
    replayed = engine_replay_error(run_dir, profile, sim_cfg)
    if replayed:
        report["engine_replay_error"] = replayed
    return report


def _scheduler_dirs(d: Path) -> dict[str, Path]:
    if (d / "compare.json").exists():
        return {name: d / name for name in json.loads((d / "compare.json").read_text())["schedulers"]}
    return {json.loads((d / "results.json").read_text())["config"]["scheduler"]["name"]: d}


def fidelity_over_repeats(real_dirs: list[str | Path], profile: str | Path | list[str | Path],
                          sim_cfg: SimConfig | None = None) -> dict:
    """Errors of the simulation against the **median** of repeated real runs of one setting.

    A CPU pipeline on a shared host varies from run to run (measured on a 2-core VM: 10–50 %
    between identical runs), so a single real run is a noisy target; the real spread
    (min/max of each metric over the repeats, relative to their median) is reported next to
    the error so the two can be read together. ``real_dirs`` are ``run`` or ``compare`` dirs
    of the same setting (same resolved config apart from the output dir). ``profile`` may be
    several profiles of the same machine (e.g. taken before and after the real runs, to
    bracket slow drifts of a shared host's speed): the simulated metrics are then the mean of
    the simulations with each (``sim_per_profile`` keeps them apart)."""
    dirs = [Path(d) for d in real_dirs]
    if not dirs:
        raise ValueError("fidelity_over_repeats needs at least one real run dir")
    profiles = [str(p) for p in (profile if isinstance(profile, (list, tuple)) else [profile])]
    per_dir = [_scheduler_dirs(d) for d in dirs]
    report = {}
    for name in per_dir[0]:
        runs = [pd[name] for pd in per_dir if name in pd]
        reals = [_metrics(json.loads((r / "results.json").read_text())) for r in runs]
        sims, per_batch = [], []
        for prof in profiles:
            cfg, out, sim = _simulate(runs[0], prof, sim_cfg)
            sims.append(_metrics(sim))
            per_batch.append([_per_batch_error(r, out) for r in runs])
        simm = {k: float(np.mean([m[k] for m in sims])) for k in METRICS}
        simm["compute_s"] = [float(x) for x in np.mean([m["compute_s"] for m in sims], axis=0)]
        median = {k: float(np.median([r[k] for r in reals])) for k in METRICS}
        report[name] = {
            "scheduler": name, "pp": cfg.parallel.pp, "repeats": len(runs), "runs": [str(r) for r in runs],
            "profiles": profiles, "real": reals, "real_median": median,
            "real_spread": {k: [min(r[k] for r in reals) / median[k] - 1.0 if median[k] else None,
                                max(r[k] for r in reals) / median[k] - 1.0 if median[k] else None] for k in METRICS},
            "sim": simm, "sim_per_profile": sims, "cost_model": sim["sim"].get("cost_model"),
            "jitter": sim["sim"].get("jitter"),
            "error": {k: _rel(simm[k], median[k]) for k in METRICS},
            "error_per_profile": [{k: _rel(m[k], median[k]) for k in METRICS} for m in sims],
            "error_per_run": [{k: _rel(simm[k], r[k]) for k in METRICS} for r in reals],
            "per_batch_compute_error": per_batch,  # [profile][run]
            "engine_replay_error": [engine_replay_error(r, profiles[0], sim_cfg) for r in runs],
        }
    return report


def fidelity_report(real_dir: str | Path, profile: str | Path, sim_cfg: SimConfig | None = None) -> dict:
    """Errors (sim / real - 1) of throughput, wall time and bubbles per scheduler.

    ``sim_cfg``: the simulation settings (profile statistic, jitter, seed...; default: the
    defaults); the workload, scheduler, model and parallelism are the real run's."""
    return {name: _one(d, str(profile), sim_cfg) for name, d in _scheduler_dirs(Path(real_dir)).items()}
