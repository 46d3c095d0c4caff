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

import glob
import json
import logging
from pathlib import Path

from ..config import RunConfig
from ..metrics.records import RunOutcome
from ..cost import make_cost_model
from ..sim.simulate import run_simulation, sim_arch, simulation_results
from .artifacts import window, write_run_artifacts

log = logging.getLogger("pp_sarathi")


def write_sim_artifacts(outcome: RunOutcome, results: dict, config: dict, run_dir: str | Path,
                        max_batches: int) -> RunOutcome:
    """A simulated run's files: the first ``max_batches`` micro-batches shown (0 = all)."""
    shown = window(outcome, max_batches)
    suffix = "" if shown is outcome else f", first {len(shown.batches)} of {len(outcome.batches)} micro-batches"
    name = config.get("scheduler", {}).get("name", "")
    write_run_artifacts(outcome, results, config, run_dir, f"simulated {name} pp={outcome.num_stages}{suffix}",
                        shown)
    return shown


def simulate_command(cfg: RunConfig, cfg_dict: dict, run_dir: str) -> dict:
    """Entry point of ``pp-sarathi simulate``; returns results.json or compare.json content."""
    from .table import print_results

    max_batches = cfg.sim.trace_max_batches
    if cfg.sim.validate_against:
        from ..sim.fidelity import fidelity_over_repeats, fidelity_report
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
    from .compare import compare_command
    cost = make_cost_model(cfg, sim_arch(cfg))  # one cost model (and one profile read) for all

    def run_one(sub_cfg: RunConfig, sub_dict: dict, sub_dir: str):
        out = run_simulation(sub_cfg, cost)
        log.info("[sim %s] %d micro-batches, %.1f s simulated in %.1f s", sub_cfg.scheduler.name,
                 len(out.batches), out.wall_s, out.sim.info["host_s"])
        results = simulation_results(out, sub_dict)
        return results, write_sim_artifacts(out, results, sub_dict, sub_dir, max_batches)

    return compare_command(cfg, cfg_dict, run_dir, run_one)
