"""Soak: a long pipeline run per policy, checking that nothing is lost and memory stays flat.

Runs ``pp-sarathi run`` (tiny model, pp=3, Poisson arrivals) once per policy and samples each
stage process's resident memory once a second. A run passes when every request ends with output
or a stated finish_reason and each stage's RSS grows by at most 10 % from the end of warm-up
(the first quarter of the run) to the end. Prints a table; ``--md FILE`` appends it as markdown.

    .venv/bin/python scripts/soak.py                      # 2,000 requests, every policy
    .venv/bin/python scripts/soak.py --requests 300 --policies sarathi
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ["orca", "vllm", "ft", "sarathi", "sarathi_serve"]


def soak(policy: str, requests: int, qps: float, out: Path) -> dict:
    run_dir = out / policy
    args = [str(Path(sys.executable).parent / "pp-sarathi"), "run", f"scheduler={policy}", "model=tiny",
            "parallel.pp=3", "parallel.threads_per_stage=1", f"workload.num_requests={requests}",
            "workload.arrival=poisson", f"workload.qps={qps}", "workload.min_len=16",
            "workload.max_len=96", "scheduler.chunk_size=64", "logging.wandb.mode=disabled",
            "logging.progress=false", "logging.timeline=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # pid -> [(requests finished so far, rss)]
    samples: dict[int, list[tuple[int, int]]] = {}
    t0 = time.monotonic()
    parent = psutil.Process(proc.pid)
    partial = run_dir / "outputs.partial.jsonl"
    while proc.poll() is None:
        try:
            done = partial.read_text().count("\n") if partial.exists() else 0
            kids = [c for c in parent.children() if "resource_tracker" not in " ".join(c.cmdline())]
            for k in kids:
                samples.setdefault(k.pid, []).append((done, k.memory_info().rss))
        except (psutil.Error, OSError):
            pass
        time.sleep(1.0)
    err = proc.stderr.read()
    outs = [json.loads(x) for x in (run_dir / "outputs.jsonl").read_text().splitlines()] \
        if (run_dir / "outputs.jsonl").exists() else []
    reasons: dict[str, int] = {}
    for o in outs:
        reasons[o["finish_reason"] or "none"] = reasons.get(o["finish_reason"] or "none", 0) + 1
    # warm-up ends once a quarter of the requests have finished (caches and heaps are touched)
    growth, rss_end, trajectory = [], [], []
    for pid, pts in sorted(samples.items()):
        pts = [p for p in pts if p[1] > 0]
        after = [rss for done, rss in pts if done >= requests // 4]
        if len(after) < 4:
            continue
        growth.append(max(after) / after[0] - 1.0)
        rss_end.append(after[-1] / 2**20)
        # RSS (MB) when 0, 10, ..., 100 % of the requests had finished
        trajectory.append([round(next((r for d, r in pts if d >= requests * q // 10), pts[-1][1]) / 2**20)
                           for q in range(11)])
    return {"policy": policy, "rc": proc.returncode, "wall_s": time.monotonic() - t0, "outputs": len(outs),
            "requests": requests, "finish_reasons": reasons, "rss_growth": growth,
            "rss_mb_end": rss_end, "rss_mb_by_decile": trajectory,
            "stderr_tail": err[-500:] if proc.returncode else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--qps", type=float, default=40.0)
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    ap.add_argument("--out", default="runs/soak")
    ap.add_argument("--md", default=None, help="append the table to this markdown file")
    a = ap.parse_args()
    out = ROOT / a.out
    rows, ok = [], True
    load = os.getloadavg()[0]
    for p in a.policies:
        r = soak(p, a.requests, a.qps, out)
        stated = r["outputs"] == r["requests"] and all(k in ("length", "stop") or k.startswith("error:")
                                                       for k in r["finish_reasons"])
        flat = bool(r["rss_growth"]) and max(r["rss_growth"]) <= 0.10
        ok &= stated and flat and r["rc"] == 0
        rows.append((p, r, stated, flat))
        print(json.dumps(r), flush=True)
    lines = [f"Soak: {a.requests} requests per policy, tiny model, pp=3, Poisson {a.qps} req/s "
             f"(load average at start {load:.2f}, {os.cpu_count()} cores)", "",
             "| policy | wall s | requests ended | finish reasons | RSS growth after warm-up per stage | RSS end (MB) | pass |",
             "|---|---|---|---|---|---|---|"]
    for p, r, stated, flat in rows:
        lines.append(f"| {p} | {r['wall_s']:.0f} | {r['outputs']}/{r['requests']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(r['finish_reasons'].items()))} | "
                     f"{' / '.join(f'{g:+.1%}' for g in r['rss_growth'])} | "
                     f"{' / '.join(f'{m:.0f}' for m in r['rss_mb_end'])} | {'yes' if stated and flat and r['rc'] == 0 else 'NO'} |")
    print("\n".join(lines))
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
