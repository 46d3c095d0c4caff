"""``pp-sarathi simulate``: artifacts of a simulated run (integration layer: may use matplotlib/wandb).

* ``sim.compare=false`` (default): one run of ``scheduler`` -> ``results.json``, ``timeline.json``,
  ``trace.json``, ``timeline.png`` in the run dir.
* ``sim.compare=true`` (``experiment=paper_gpt3_pp``): every scheduler of
  ``compare.schedulers`` -> ``<run dir>/<name>/...`` plus ``compare.json`` (DESIGN.md §3 ratios)
  and ``compare_timeline.png``.
* ``sim.validate_against=REAL_RUN_DIR sim.profile=CSV``: re-simulate a real ``run``/``compare``
  (its own resolved config) and write ``fidelity.json`` (simulated / real - 1 per metric);
  repeated runs of one setting (a glob such as ``runs/fid/main_r*``, or a quoted comma-separated
  list) are compared with their median.

A paper-scale simulation has ~10^5 micro-batches; the trace, timeline.json and pictures show
the first ``sim.trace_max_batches`` of them (results.json always covers the whole run).
"""
from __future__ import annotations

import copy
import glob
import json
import logging
from dataclasses import asdict
from pathlib import Path

from ..config import RunConfig
from ..metrics.records import RunOutcome
from ..cost import make_cost_model
from ..sim.simulate import run_simulation, sim_arch, simulate_compare, simulation_results

log = logging.getLogger("pp_sarathi")


def window(outcome: RunOutcome, max_batches: int) -> RunOutcome:
    """The outcome restricted to the micro-batches with the ``max_batches`` lowest ids."""
    if max_batches <= 0 or len(outcome.batches) <= max_batches:
        return outcome
    keep = {b.batch_id for b in sorted(outcome.batches, key=lambda b: b.batch_id)[:max_batches]}
    return RunOutcome(sequences=[], batches=[b for b in outcome.batches if b.batch_id in keep],
                      stage_records=[r for r in outcome.stage_records if r.batch_id in keep],
                      num_stages=outcome.num_stages, wall_s=max((b.done_at for b in outcome.batches
                                                                  if b.batch_id in keep), default=0.0),
                      layer_ranges=outcome.layer_ranges, device=outcome.device)


def write_sim_artifacts(outcome: RunOutcome, results: dict, config: dict, run_dir: str | Path,
                        max_batches: int) -> None:
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(results, indent=2))
    shown = window(outcome, max_batches)
    (d / "timeline.json").write_text(json.dumps({
        "num_stages": shown.num_stages, "wall_s": shown.wall_s, "device": shown.device,
        "layer_ranges": shown.layer_ranges, "batches": [asdict(b) for b in shown.batches],
        "stage_records": [r.to_dict() for r in shown.stage_records],
        "window": {"batches": len(shown.batches), "of": len(outcome.batches)}}))
    log_cfg = config.get("logging", {})
    if log_cfg.get("trace", True):
        from ..metrics.trace import write_trace
        write_trace(shown, d / "trace.json")
    name = config.get("scheduler", {}).get("name", "")
    if log_cfg.get("timeline", True) and shown.stage_records:
        from .plots import write_timeline
        suffix = "" if shown is outcome else f", first {len(shown.batches)} of {len(outcome.batches)} micro-batches"
        write_timeline(shown, d / "timeline.png", f"simulated {name} pp={outcome.num_stages}{suffix}")
    if log_cfg.get("wandb", {}).get("mode", "disabled") != "disabled":
        from .wandb_log import log_run
        log_run(shown, results, config, d)


def simulate_command(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> dict:
    """Entry point of ``pp-sarathi simulate``; returns results.json or compare.json content."""
    from .table import print_compare, print_results

    max_batches = cfg.sim.trace_max_batches
    if cfg.sim.validate_against:
        from ..sim.fidelity import fidelity_over_repeats, fidelity_report
        if not cfg.sim.profile:
            raise ValueError("sim.validate_against needs sim.profile (a profile taken on the real run's machine)")
        dirs, missing = [], []
        for item in (d.strip() for d in str(cfg.sim.validate_against).split(",")):
            found = sorted(glob.glob(item)) if item else []
            dirs += [d for d in found if Path(d).is_dir()]
            if item and not found:
                missing.append(item)
        if missing or not dirs:
            raise ValueError(f"sim.validate_against: no such run dir: {', '.join(missing) or cfg.sim.validate_against}")
        if len(dirs) == 1:
            report = fidelity_report(dirs[0], cfg.sim.profile, cfg.sim)
        else:  # repeats of one setting: errors against their median
            report = fidelity_over_repeats(dirs, cfg.sim.profile, cfg.sim)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "fidelity.json").write_text(json.dumps(report, indent=2))
        against = "real" if len(dirs) == 1 else f"median of {len(dirs)} real runs"
        for name, r in report.items():
            e = r["error"]
            print(f"{name}: wall {e['wall_s']:+.1%}  throughput {e['tokens_per_s']:+.1%}  "
                  f"bubble total {e['bubble_total_s']:+.1%}  bubble/request p50 {e['bubble_per_request_p50_ms']:+.1%}"
                  f"  (simulated / {against} - 1)")
        log.info("wrote %s/fidelity.json", run_dir)
        return report
    if not cfg.sim.compare:
        out = run_simulation(cfg)
        results = simulation_results(out, cfg_dict)
        write_sim_artifacts(out, results, cfg_dict, run_dir, max_batches)
        print_results({cfg.scheduler.name: results})
        log.info("simulated %d micro-batches (%.1f s of %s) in %.1f s; wrote %s", len(out.batches),
                 out.wall_s, out.device, out.sim.info["host_s"], run_dir)
        return results
    names = list(cfg.compare.schedulers)
    summary = simulate_compare(cfg, names, cfg.compare.baseline, "sarathi", cfg_dict, keep_outcomes=True)
    outcomes = summary.pop("_outcomes")
    shown = {}
    for name in names:
        sub = copy.deepcopy(cfg_dict)
        sub.setdefault("scheduler", {})["name"] = name
        sub["output_dir"] = str(Path(run_dir) / name)
        write_sim_artifacts(outcomes[name], summary["schedulers"][name], sub, Path(run_dir) / name, max_batches)
        shown[name] = window(outcomes[name], max_batches)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "compare.json").write_text(json.dumps(summary, indent=2))
    if cfg.logging.timeline:
        from .plots import write_side_by_side
        write_side_by_side(shown, Path(run_dir) / "compare_timeline.png")
    print_compare(summary["schedulers"], summary["ratios_by_scheduler"], cfg.compare.baseline)
    log.info("wrote %s/compare.json", run_dir)
    return summary


def profile_errors_command(cfg: RunConfig, run_dir: str) -> dict:
    """Held-out error of the profile cost model (``sim.profile``) -> ``profile_errors.json``."""
    from ..cost import holdout_errors
    if not cfg.sim.profile:
        raise ValueError("set sim.profile=PATH to a profile CSV")
    make_cost_model(cfg, sim_arch(cfg))  # checks the shape matches
    errs = holdout_errors(cfg.sim.profile)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "profile_errors.json").write_text(json.dumps(errs, indent=2))
    return errs
