#!/usr/bin/env python
"""The README's main job (`pp-sarathi compare`), repeated in one sitting, reported as medians.

Each round is one `pp-sarathi compare` (every scheduler of compare.schedulers in turn, fresh
processes each), so the schedulers alternate and a load drift hits them alike. Per scheduler:
wall time, throughput, stage bubble per stage with its causes (driver / imbalance / transport),
the driver's busy time, per-request bubble p50/p99 and the stage-compute spread of its
micro-batches; ratios against the baseline taken per round, then the median. What holds the
stage bubble: each run replayed with its own compute times, with the stages' planned
difference and/or the host's step-to-step variation taken out (``sX_bubble_<variant>``,
``pp_sarathi/sim/whatif.py``; ``scripts/bubble_whatif.py`` prints them per run).

    .venv/bin/python scripts/bench_main_job.py                 # 3 rounds of the README job
    .venv/bin/python scripts/bench_main_job.py --rounds 1 -- workload.num_requests=16

Writes OUT/main_job.md and OUT/main_job.json (default OUT = runs/main_job-<timestamp>).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, run_cli
from pp_sarathi.sim.whatif import VARIANTS, stage_bubble_whatif


def figures(res: dict) -> dict:
    st = res["stages"]
    out = {"wall_s": res["wall_s"], "tok_s": res["throughput"]["tokens_per_s"],
           "bubble_total_s": res["bubble"]["total_s"],
           "req_bubble_p50_ms": res["bubble"]["per_request_ms"]["p50"],
           "req_bubble_p99_ms": res["bubble"]["per_request_ms"]["p99"],
           "driver_busy_s": res.get("driver", {}).get("busy_s", float("nan")),
           "schedule_p50_ms": res.get("driver", {}).get("schedule_ms", {}).get("p50") or float("nan")}
    for s in st:
        i = s["stage"]
        out[f"s{i}_bubble_frac"] = s["bubble_fraction"]
        out[f"s{i}_compute_s"] = s["compute_s"]
        for cause, v in s.get("bubble_causes_s", {}).items():
            out[f"s{i}_{cause}_s"] = v
        for key in ("compute_cv", "compute_cv_prefill", "cpu_sys_s"):
            if s.get(key) is not None:
                out[f"s{i}_{key}"] = s[key]
        if s.get("cpu_user_s") is not None:  # against compute_s: a stage that waited for a core computed longer than its CPU
            out[f"s{i}_cpu_s"] = s["cpu_user_s"] + s["cpu_sys_s"]
    return out


def whatif_figures(run_dir: Path) -> dict:
    """Stage bubble of the run's replays (none for a one-stage run or without a timeline)."""
    rep = stage_bubble_whatif(run_dir) if (run_dir / "timeline.json").exists() else None
    if rep is None:
        return {}
    return {f"s{i}_bubble_{v}": b for v in VARIANTS for i, b in enumerate(rep["variants"][v]["stage_bubble"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args, extra = parse_script_args(ap, argv)
    out = Path(args.out or f"runs/main_job-{time.strftime('%Y%m%d-%H%M%S')}")
    notes = [f"start: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · {machine_note()}"]
    rounds = []
    for r in range(args.rounds):
        run_cli("compare", extra, out / f"r{r}", results=False)
        cmp = json.loads((out / f"r{r}" / "compare.json").read_text())
        rounds.append({name: figures(res) | whatif_figures(out / f"r{r}" / name)
                       for name, res in cmp["schedulers"].items()})
        print(f"[main_job] round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    notes.append(f"end: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · {machine_note()}")
    names = list(rounds[0])
    baseline = names[0]
    keys = list(rounds[0][baseline])
    med = {n: {k: statistics.median(rd[n][k] for rd in rounds if k in rd[n]) for k in keys if k in rounds[0][n]}
           for n in names}
    rows = [[k] + [f"{med[n].get(k, float('nan')):.3g}" for n in names] for k in keys]
    ratio_rows = []
    for n in names[1:]:
        per_round = [(rd[baseline]["req_bubble_p50_ms"] / rd[n]["req_bubble_p50_ms"],
                      rd[baseline]["bubble_total_s"] / rd[n]["bubble_total_s"],
                      rd[n]["tok_s"] / rd[baseline]["tok_s"]) for rd in rounds]
        cols = list(zip(*per_round))
        ratio_rows.append([f"{n} vs {baseline}"] + [" / ".join(f"{x:.2f}×" for x in c) + f" (median {statistics.median(c):.2f}×)" for c in cols])
    md = "\n".join(notes) + "\n\nMedians over rounds:\n\n" + md_table(["figure"] + names, rows) + \
        "\n\nRatios per round (bubble: baseline ÷ scheduler; throughput: scheduler ÷ baseline):\n\n" + \
        md_table(["pair", "per-request bubble p50", "bubble total", "throughput"], ratio_rows) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "main_job.md").write_text(md)
    (out / "main_job.json").write_text(json.dumps({"rounds": rounds, "median": med, "notes": notes}, indent=2))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
