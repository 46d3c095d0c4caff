#!/usr/bin/env python
"""A/B of ``parallel.keep_freed_memory``: the README comparison with the stage processes'
allocator keeping freed memory (on) or handing it back to the OS (off, glibc's default).

Runs ``pp-sarathi compare`` alternately with the key on and off, ``--repeats`` times each, so
that a shared host's drift hits both alike, and prints per scheduler the median wall time and
throughput of each arm and their ratio.

    .venv/bin/python scripts/bench_host_memory.py                 # README setting, 3 repeats
    .venv/bin/python scripts/bench_host_memory.py --repeats 5 -- workload.num_requests=32
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, run_cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args, extra = parse_script_args(ap, argv)
    out = Path(args.out or f"runs/bench_host_memory-{time.strftime('%Y%m%d-%H%M%S')}")
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
    for name in walls["on"]:
        on_w, off_w = statistics.median(walls["on"][name]), statistics.median(walls["off"][name])
        on_t, off_t = statistics.median(tput["on"][name]), statistics.median(tput["off"][name])
        rows.append([name, f"{off_w:.1f} s", f"{on_w:.1f} s", f"{off_w / on_w:.2f}x",
                     f"{off_t:.0f}", f"{on_t:.0f}", f"{on_t / off_t:.2f}x",
                     " / ".join(f"{w:.1f}" for w in walls["off"][name]), " / ".join(f"{w:.1f}" for w in walls["on"][name])])
    report = "\n".join([
        machine_note(), "",
        f"`pp-sarathi compare` {' '.join(extra) or '(README setting)'}, {args.repeats} runs per arm, interleaved; medians.", "",
        md_table(["scheduler", "wall off", "wall on", "speed-up", "tok/s off", "tok/s on", "throughput ratio",
                  "walls off", "walls on"], rows)])
    print(report)
    (out / "bench_host_memory.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
