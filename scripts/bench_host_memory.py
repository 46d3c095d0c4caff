#!/usr/bin/env python
"""A/B of ``parallel.keep_freed_memory``: the README comparison with the stage processes'
allocator keeping freed memory (on) or handing it back to the OS (off, glibc's default).

1. Stage steps: in a fresh process per arm (the allocator is set once per process), the first
   stage of the README pipeline runs a 14-prompt prefill (Orca's first micro-batch), a
   14-request decode and a chunk + 13 decodes (SARATHI's micro-batch) in turns; prints the median
   step time and the page faults per step.
2. Whole runs: ``pp-sarathi compare`` alternately with the key on and off, ``--repeats`` times
   each, so that a shared host's drift hits both alike; prints per scheduler the median wall
   time and throughput of each arm and their ratio.

    .venv/bin/python scripts/bench_host_memory.py                 # README setting, 3 repeats
    .venv/bin/python scripts/bench_host_memory.py --repeats 5 -- workload.num_requests=32
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, run_cli


STEP_PROBE = """
import json, resource, statistics, sys, time
import torch
from pp_sarathi.config import RunConfig
from pp_sarathi.runtime.host import keep_freed_memory
from pp_sarathi.sim.profile.bench import Bench
from pp_sarathi.sim.profile.points import mixed_parts
keep = sys.argv[1] == "on"
if keep:
    keep_freed_memory()
torch.set_num_threads(1)
cfg = RunConfig()
bench = Bench(cfg, torch.device("cpu"))
ex, bs = bench.stages["first"], bench.bs
shapes = {"prefill 14 x 256": mixed_parts(256, 14, 0, 0, 0, bs), "decode 14 @ 470": mixed_parts(0, 0, 0, 14, 470, bs),
          "chunk 128 + 13 decodes": mixed_parts(128, 1, 0, 13, 470, bs)}
res = {k: ([], []) for k in shapes}
with torch.inference_mode():
    for rnd in range(int(sys.argv[2])):
        for name, parts in shapes.items():
            for _ in range(1 if name.startswith("prefill") else 4):
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                ex.step(parts, None)
                if rnd:  # the first round warms up
                    res[name][0].append(time.perf_counter() - t0)
                    res[name][1].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({k: [statistics.median(t), statistics.median(f)] for k, (t, f) in res.items()}))
"""


def step_probe(rounds: int) -> str:
    meds: dict[str, dict[str, list]] = {"on": {}, "off": {}}
    for i in range(2):  # each arm twice, alternating
        for arm in (("off", "on") if i == 0 else ("on", "off")):
            out = subprocess.run([sys.executable, "-c", STEP_PROBE, arm, str(rounds)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            for name, (t, f) in json.loads(out).items():
                meds[arm].setdefault(name, []).append((t, f))
    rows = []
    for name in meds["on"]:
        off_t = statistics.median(t for t, _ in meds["off"][name])
        on_t = statistics.median(t for t, _ in meds["on"][name])
        rows.append([name, f"{off_t * 1e3:.1f} ms", f"{on_t * 1e3:.1f} ms", f"{off_t / on_t:.2f}x",
                     " / ".join(f"{f:.0f}" for _, f in meds["off"][name]), " / ".join(f"{f:.0f}" for _, f in meds["on"][name])])
    return md_table(["first-stage step (default model, pp=2)", "off", "on", "speed-up", "page faults/step off",
                     "page faults/step on"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="whole runs per arm (0: stage steps only)")
    ap.add_argument("--step-rounds", type=int, default=4, help="rounds of the stage-step probe per process (0: skip)")
    args, extra = parse_script_args(ap, argv)
    out = Path(args.out or f"runs/bench_host_memory-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    steps = step_probe(args.step_rounds) if args.step_rounds else ""
    if steps:
        print(steps, flush=True)
    arms = {"on": "parallel.keep_freed_memory=true", "off": "parallel.keep_freed_memory=false"}
    walls: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    tput: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    for i in range(args.repeats):
        for arm, override in (arms.items() if i % 2 == 0 else reversed(list(arms.items()))):
            d = out / f"{arm}_r{i + 1}"
            run_cli("compare", [override, *extra], d, results=False)
            for name, res in json.loads((d / "compare.json").read_text())["schedulers"].items():
                walls[arm].setdefault(name, []).append(res["wall_s"])
                tput[arm].setdefault(name, []).append(res["throughput"]["tokens_per_s"])
            print(f"  round {i + 1} {arm}: " + ", ".join(f"{n} {w[-1]:.1f} s" for n, w in walls[arm].items()), flush=True)
    rows = []
    for name in walls["on"] if args.repeats else []:
        on_w, off_w = statistics.median(walls["on"][name]), statistics.median(walls["off"][name])
        on_t, off_t = statistics.median(tput["on"][name]), statistics.median(tput["off"][name])
        rows.append([name, f"{off_w:.1f} s", f"{on_w:.1f} s", f"{off_w / on_w:.2f}x",
                     f"{off_t:.0f}", f"{on_t:.0f}", f"{on_t / off_t:.2f}x",
                     " / ".join(f"{w:.1f}" for w in walls["off"][name]), " / ".join(f"{w:.1f}" for w in walls["on"][name])])
    report = [machine_note(), ""]
    if steps:
        report += [f"Stage steps: 2 processes per arm, {args.step_rounds - 1} timed rounds each; medians.", "", steps, ""]
    if rows:
        report += [f"`pp-sarathi compare` {' '.join(extra) or '(README setting)'}, {args.repeats} runs per arm, "
                   "interleaved; medians.", "",
                   md_table(["scheduler", "wall off", "wall on", "speed-up", "tok/s off", "tok/s on", "throughput ratio",
                             "walls off", "walls on"], rows)]
    report = "\n".join(report)
    print(report)
    (out / "bench_host_memory.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
