#!/usr/bin/env python
"""Five batching policies on one synthetic workload (pp=1), in one sitting.

Runs ``pp-sarathi run parallel.pp=1 scheduler=NAME`` for orca, vllm, ft, sarathi and
sarathi_serve on the same seeded workload (same prompts, same output lengths, EOS ignored),
one fresh process per run, and prints/writes a markdown table: throughput (all tokens / wall),
decode throughput, TTFT p50/p99 and TBT p50/p99, with each policy's ratio against the baseline
measured in the same sitting. With ``--rounds N`` the policies run round-robin N times and
each metric is the median over rounds (load drift on a shared machine hits every policy alike).

    .venv/bin/python scripts/bench_policies.py                      # defaults: a few minutes on 2 cores
    .venv/bin/python scripts/bench_policies.py --rounds 3 --num-requests 16 -- model=tiny
    (anything after -- is passed to every run as hydra overrides)

Writes OUT/policies.md, OUT/policies.json and OUT/<policy>[_r<k>]/ run dirs (default
OUT = runs/bench_policies-<timestamp>).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pp_sarathi.bench.runs import parse_script_args, machine_note, md_table, run_cli

POLICIES = ["orca", "vllm", "ft", "sarathi", "sarathi_serve"]
METRICS = [  # (label, path in results.json, higher is better)
    ("throughput tok/s", ("throughput", "tokens_per_s"), True),
    ("decode tok/s", ("throughput", "decode_tokens_per_s"), True),
    ("TTFT p50 ms", ("latency", "ttft_ms", "p50"), False),
    ("TTFT p99 ms", ("latency", "ttft_ms", "p99"), False),
    ("TBT p50 ms", ("latency", "tbt_ms", "p50"), False),
    ("TBT p99 ms", ("latency", "tbt_ms", "p99"), False),
]


def get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--baseline", default="orca")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--num-requests", type=int, default=8)
    ap.add_argument("--min-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--pd-ratio", type=float, default=8.0)
    ap.add_argument("--length-dist", default="zipf")
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="parallel.threads_per_stage (0 = all cores)")
    args, extra = parse_script_args(ap, argv)
    if args.threads > 0:
        extra = [f"parallel.threads_per_stage={args.threads}", *extra]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.baseline not in policies:
        ap.error(f"--baseline {args.baseline} not among --policies {policies}")
    out = args.out or Path("runs") / f"bench_policies-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    common = ["parallel.pp=1", "workload=synthetic", f"workload.num_requests={args.num_requests}",
              f"workload.min_len={args.min_len}", f"workload.max_len={args.max_len}",
              f"workload.pd_ratio={args.pd_ratio}", f"workload.length_dist={args.length_dist}",
              "workload.arrival=static", f"workload.seed={args.seed}", "sampling.ignore_eos=true",
              "sampling.temperature=0", f"scheduler.chunk_size={args.chunk_size}",
              f"scheduler.max_batch_size={args.max_batch_size}", "logging.trace=false", *extra]
    note_before = machine_note()
    print(f"[bench_policies] {note_before}", flush=True)
    per_round: dict[str, list[dict]] = {p: [] for p in policies}
    for r in range(args.rounds):
        for p in policies:
            d = out / (p if args.rounds == 1 else f"{p}_r{r}")
            res = run_cli("run", [f"scheduler={p}", *common], d)
            per_round[p].append(res)
            print(f"[bench_policies] round {r} {p}: {res['throughput']['tokens_per_s']:.1f} tok/s, "
                  f"wall {res['wall_s']:.1f} s ({d})", flush=True)
    note_after = machine_note()
    first = per_round[policies[0]][0]
    device = first["device"]
    med = {p: {label: statistics.median(get(x, path) for x in per_round[p]) for label, path, _ in METRICS}
           for p in policies}
    for p in policies:
        med[p]["wall s"] = statistics.median(x["wall_s"] for x in per_round[p])
        med[p]["prompt tokens"] = per_round[p][0]["throughput"]["prompt_tokens"]
        med[p]["decode tokens"] = per_round[p][0]["throughput"]["decode_tokens"]
        med[p]["batches"] = per_round[p][0]["batches"]["count"]
    base = med[args.baseline]
    # Same tokens for every policy, so the decode-throughput ratio equals the throughput ratio.
    header = ["policy", "wall s", "batches"] + [m[0] for m in METRICS] + \
             [f"throughput / {args.baseline}", f"TTFT p50 / {args.baseline}", f"TBT p99 / {args.baseline}"]
    rows = []
    for p in policies:
        m = med[p]
        rows.append([p, f"{m['wall s']:.2f}", m["batches"]] + [f"{m[label]:.1f}" for label, _, _ in METRICS]
                    + [f"{m['throughput tok/s'] / base['throughput tok/s']:.2f}x",
                       f"{m['TTFT p50 ms'] / base['TTFT p50 ms']:.2f}x",
                       f"{m['TBT p99 ms'] / base['TBT p99 ms']:.2f}x"])
    tokens = {(med[p]["prompt tokens"], med[p]["decode tokens"]) for p in policies}
    wl = (f"{args.num_requests} requests, synthetic {args.length_dist} lengths {args.min_len}-{args.max_len}, "
          f"P:D {args.pd_ratio:g}, static arrivals, seed {args.seed}, EOS ignored; chunk/token budget "
          f"{args.chunk_size}, max batch {args.max_batch_size}; extra overrides: {' '.join(extra) or 'none'}")
    md = "\n".join([
        f"Five policies, pp=1, measured {time.strftime('%Y-%m-%d %H:%M')} on device `{device}` "
        f"({note_before}; after: {note_after.split('load average ')[-1]}).",
        f"Workload: {wl}. Prompt/decode tokens per run: {sorted(tokens)}.",
        f"Each cell: median over {args.rounds} round(s); ratios against {args.baseline} from the same sitting. "
        "Throughput = (prompt + output tokens) / wall of the serving loop (model load excluded).", "",
        md_table(header, rows), ""])
    print(md)
    (out / "policies.md").write_text(md)
    (out / "policies.json").write_text(json.dumps({
        "device": device, "machine_before": note_before, "machine_after": note_after, "workload": wl,
        "overrides": common, "rounds": args.rounds, "baseline": args.baseline, "median": med,
        "runs": {p: [{k: v for k, v in x.items() if k in ("throughput", "latency", "wall_s", "batches",
                                                             "_process_s")} for x in per_round[p]]
                 for p in policies}}, indent=2))
    print(f"[bench_policies] wrote {out}/policies.md and policies.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
