#!/usr/bin/env python
"""The three policies (orca, sarathi, sarathi_uniform) on the two shared request traces.

Cases: ShareGPT (no arrival column, so every request arrives at t=0), Splitwise code with its
own arrivals, and Splitwise code all at once (``workload.time_scale=0``); the first
``--requests`` of each, clipped to the model's context as ``workload=trace`` does. Each case
is one ``pp-sarathi compare`` (``--real``) or ``pp-sarathi simulate sim.compare=true`` (the
default: the same scheduler code on the ``hardware`` roofline, or on a measured
``sim.profile=`` passed after ``--``). Prints and writes one table: throughput, stage bubble,
per-request bubble, TTFT/TBT and the prefill micro-batches' compute CV per policy, and each
policy's ratios against orca from the same case.

    .venv/bin/python scripts/bench_traces.py                        # simulated, 128 requests
    .venv/bin/python scripts/bench_traces.py --real --requests 32   # real runs on this machine
    .venv/bin/python scripts/bench_traces.py -- sim.profile=runs/<dir>/profile.csv

Writes OUT/traces.md and OUT/traces.json (default OUT = runs/traces-<timestamp>).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, run_cli

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # (label, file, arrivals, overrides)
    ("ShareGPT", "sharegpt_8k_filtered_stats_llama2_tokenizer.csv", "t=0 (no arrival column)", []),
    ("Splitwise code", "splitwise_code.csv", "trace", []),
    ("Splitwise code", "splitwise_code.csv", "all at once", ["workload.time_scale=0"]),
]


def row(case: str, arrivals: str, name: str, res: dict, base: dict) -> list:
    st = res["stages"]
    lat = res["latency"]
    tput = res["throughput"]["tokens_per_s"]
    req_bubble = res["bubble"]["per_request_ms"]["p50"]
    ratio_bubble = base["bubble"]["per_request_ms"]["p50"] / req_bubble if req_bubble else float("inf")
    return [case, arrivals, name, f"{tput:.0f}", f"{tput / base['throughput']['tokens_per_s']:.2f}×",
            " / ".join(f"{100 * s['bubble_fraction']:.1f}" for s in st),
            f"{req_bubble:.0f}", f"{ratio_bubble:.1f}×",
            f"{lat['ttft_ms']['p50']:.0f}", f"{lat['tbt_ms']['p50']:.0f}",
            " / ".join(f"{s['compute_cv_prefill']:.2f}" for s in st)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=128, help="first N requests of each trace")
    ap.add_argument("--real", action="store_true", help="real runs (compare) instead of the simulator")
    ap.add_argument("--traces", default=str(ROOT.parent / "shared" / "traces"), help="folder of the trace CSVs")
    ap.add_argument("--out", default=None)
    args, extra = parse_script_args(ap, argv)
    traces = Path(args.traces).resolve()
    missing = [f for _, f, _, _ in CASES if not (traces / f).exists()]
    if missing:
        ap.error(f"{', '.join(missing)} not found in {traces} (--traces)")
    out = Path(args.out or f"runs/traces-{time.strftime('%Y%m%d-%H%M%S')}")
    command, mode = ("compare", []) if args.real else ("simulate", ["sim.compare=true"])
    notes = [f"start: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · {machine_note()}",
             f"{'real runs' if args.real else 'simulated'}, first {args.requests} requests per trace"
             + (f", overrides: {' '.join(extra)}" if extra else "")]
    rows, raw = [], {}
    for i, (label, fname, arrivals, case_over) in enumerate(CASES):
        over = ["workload=trace", f"workload.path={traces / fname}", f"workload.num_requests={args.requests}",
                *case_over, *mode, *extra]
        run_dir = out / f"case{i}"
        run_cli(command, over, run_dir, results=False)
        cmp = json.loads((run_dir / "compare.json").read_text())["schedulers"]
        base = cmp["orca"]
        raw[f"{label} / {arrivals}"] = {n: {"device": r["device"], "stages": r["stages"], "throughput": r["throughput"],
                                            "bubble": r["bubble"], "latency": r["latency"]} for n, r in cmp.items()}
        rows += [row(label, arrivals, n, r, base) for n, r in cmp.items()]
        print(f"[traces] {label} ({arrivals}) done: {next(iter(cmp.values()))['device']}", file=sys.stderr, flush=True)
    notes.append(f"end: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · {machine_note()}")
    header = ["trace", "arrivals", "policy", "tok/s", "÷ orca", "stage bubble % (per stage)",
              "per-request bubble p50 ms", "orca ÷ policy", "TTFT p50 ms", "TBT p50 ms", "compute CV (prefill)"]
    md = "\n".join(notes) + "\n\n" + md_table(header, rows) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "traces.md").write_text(md)
    (out / "traces.json").write_text(json.dumps({"notes": notes, "cases": raw}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
