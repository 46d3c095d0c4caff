#!/usr/bin/env python
"""Simulator fidelity on this machine: profile once, repeat real pipeline runs, compare.

1. ``pp-sarathi profile parallel.pp=P`` for every pipeline depth the settings use;
2. ``pp-sarathi compare`` (Orca vs SARATHI) ``--repeats`` times per setting, the settings
   interleaved round by round so that load drift on a shared machine hits each alike;
3. the same profiles again (``--no-bracket``: not): a shared host's speed drifts by 10-20 %
   over minutes, and profiles before and after the runs bracket the speed the runs saw;
4. per setting and scheduler, a simulation with each profile; their mean is compared with the
   **median** of the real repeats (sim.fidelity.fidelity_over_repeats). The real runs' own
   spread and the error with each profile alone are printed too. Nothing is fitted to the
   real runs: the simulations only read the profiles.
5. each real run replayed through the event engine with its own recorded compute times: the
   engine's share of the error, apart from the cost model's.

    .venv/bin/python scripts/sim_fidelity.py                          # README setting + chunk 64, 3 repeats
    .venv/bin/python scripts/sim_fidelity.py --settings main,pp3 --repeats 5
    .venv/bin/python scripts/sim_fidelity.py --settings main -- workload.num_requests=16   (quick look)

Settings: ``main`` (the README setting), ``chunk64`` (scheduler.chunk_size=64), ``pp3``
(parallel.pp=3). Anything after ``--`` goes to every profile/compare as hydra overrides.
Writes OUT/fidelity.md, OUT/fidelity.json and the run dirs (default OUT = runs/sim_fidelity-<timestamp>).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, run_cli
from pp_sarathi.config import SimConfig
from pp_sarathi.sim.fidelity import METRICS, fidelity_over_repeats

SETTINGS = {"main": [], "chunk64": ["scheduler.chunk_size=64"], "pp3": ["parallel.pp=3"]}
LABELS = {"wall_s": "wall", "tokens_per_s": "throughput", "bubble_total_s": "bubble total",
          "bubble_per_request_p50_ms": "bubble/request p50"}


def pp_of(overrides: list[str]) -> int:
    for o in reversed(overrides):
        if o.startswith("parallel.pp="):
            return int(o.split("=", 1)[1])
    return 2  # the config default


def stage_step_drift(before: str, after: str) -> float:
    """Median ratio after / before of the whole-stage-step rows of two profiles of one machine
    (- 1): how much the host's speed moved between them."""
    from statistics import median

    from pp_sarathi.cost import read_profile

    def steps(path):
        return {(r["stage"], r["chunk"], r["prefills"], r["cached"], r["batch"], r["context"]): r["seconds"]
                for r in read_profile(path) if r["op"] == "stage"}
    a, b = steps(before), steps(after)
    ratios = [b[k] / a[k] for k in a if k in b and a[k] > 0]
    return median(ratios) - 1.0 if ratios else float("nan")


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--settings", default="main,chunk64", help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", default=None, help="use this profile.csv instead of taking any (single pp only)")
    ap.add_argument("--no-bracket", action="store_true", help="profile only before the real runs")
    args, extra = parse_script_args(ap, argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        ap.error(f"unknown setting(s) {unknown}; choose from {sorted(SETTINGS)}")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    out = args.out or Path("runs") / time.strftime("sim_fidelity-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    overrides = {s: SETTINGS[s] + extra for s in names}
    depths = sorted({pp_of(o) for o in overrides.values()})
    if args.profile and len(depths) > 1:
        ap.error("--profile covers one pipeline depth; these settings use " + ", ".join(map(str, depths)))
    print(machine_note(), flush=True)

    profiles: dict[int, list[str]] = {pp: [] for pp in depths}

    def take_profiles(tag: str) -> None:
        for pp in depths:
            t0 = time.perf_counter()
            d = out / f"profile_pp{pp}_{tag}"
            run_cli("profile", [f"parallel.pp={pp}", *extra], d, timeout=3600, results=False)
            profiles[pp].append(str(d / "profile.csv"))
            print(f"profile pp={pp} ({tag}): {time.perf_counter() - t0:.0f} s -> {profiles[pp][-1]}", flush=True)

    if args.profile:
        profiles = {pp: [args.profile] for pp in depths}
    else:
        take_profiles("before")

    dirs: dict[str, list[Path]] = {s: [] for s in names}
    for k in range(args.repeats):
        for s in names:
            d = out / f"{s}_r{k + 1}"
            t0 = time.perf_counter()
            run_cli("compare", overrides[s], d, timeout=3600, results=False)
            dirs[s].append(d)
            print(f"real {s} round {k + 1}/{args.repeats}: {time.perf_counter() - t0:.0f} s", flush=True)

    if not args.profile and not args.no_bracket:
        take_profiles("after")

    report, rows, by_profile, replay = {}, [], [], []
    for s in names:
        rep = fidelity_over_repeats(dirs[s], profiles[pp_of(overrides[s])], SimConfig())
        report[s] = rep
        for sched, r in rep.items():
            rows.append([s, sched, f"{r['real_median']['wall_s']:.3g} s", f"{r['sim']['wall_s']:.3g} s"]
                        + [f"{pct(r['error'][m])} ({pct(r['real_spread'][m][0])}..{pct(r['real_spread'][m][1])})"
                           for m in METRICS])
            by_profile.append([s, sched] + [" / ".join(pct(e[m]) for e in r["error_per_profile"])
                                            for m in ("tokens_per_s", "bubble_total_s")])
            reps = [e for e in r["engine_replay_error"] if e]
            replay.append([s, sched] + [", ".join(pct(e[m]) for e in reps) for m in METRICS])
    table = md_table(["setting", "scheduler", "real wall (median)", "simulated wall"]
                     + [f"{LABELS[m]}: error (real spread)" for m in METRICS], rows)
    worst = max(abs(r["error"][m]) for rep in report.values() for r in rep.values()
                for m in ("tokens_per_s", "bubble_total_s"))
    drift = ""
    for pp, ps in profiles.items():
        if len(ps) == 2:
            d = stage_step_drift(ps[0], ps[1])
            drift += (f"\nHost speed: pp={pp} stage steps took {pct(d)} in the profile after the real runs vs the one "
                      "before" + (" -- MORE THAN 5 %: the host's speed drifted during the campaign, so the errors "
                                  "measure the host as much as the simulator.\n" if abs(d) > 0.05 else ".\n"))
    text = (f"{machine_note()}\n{drift}\nError = simulated (mean over the profiles) / median of {args.repeats} real runs - 1; "
            "real spread = min..max of the real runs relative to their median.\n\n" + table
            + f"\n\nlargest |error| on throughput and bubble total: {100 * worst:.1f}%\n"
            + "\nWith each profile alone (" + " / ".join(Path(p).parent.name for p in profiles[depths[0]])
            + "):\n\n" + md_table(["setting", "scheduler", "throughput error", "bubble total error"], by_profile)
            + "\n\nThe event engine alone (each real run replayed with its own recorded compute times, "
            "transport from the profile; error per run):\n\n"
            + md_table(["setting", "scheduler"] + [LABELS[m] for m in METRICS], replay) + "\n")
    (out / "fidelity.md").write_text(text)
    (out / "fidelity.json").write_text(json.dumps({"profiles": profiles, "settings": overrides, "report": report},
                                                  indent=2))
    print("\n" + text + f"\nwrote {out}/fidelity.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
