#!/usr/bin/env python
"""What holds a pipeline run's stage bubble: each run replayed through the event engine with its
own micro-batches, as recorded and with the stages' planned difference and/or the host's
step-to-step variation taken out (``pp_sarathi/sim/whatif.py`` defines the variants).

    .venv/bin/python scripts/bubble_whatif.py runs/main_job-1202f          # bench_main_job output
    .venv/bin/python scripts/bubble_whatif.py RUN_OR_COMPARE_DIR... [--scheduler sarathi_uniform]

A directory may be a ``run`` dir (results.json + timeline.json), a ``compare`` dir (one sub-dir
per scheduler) or a directory of those (``r0``, ``r1``, ... as ``scripts/bench_main_job.py``
writes them). Prints one table per scheduler (every run and the medians); nothing is run.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from statistics import median

from pp_sarathi.bench.runs import md_table
from pp_sarathi.sim.whatif import VARIANTS, stage_bubble_whatif


def run_dirs(d: Path) -> list[Path]:
    """Every run dir (with a timeline) under ``d``: itself, its schedulers, its rounds."""
    if (d / "timeline.json").exists() and (d / "results.json").exists():
        return [d]
    return [r for sub in sorted(p for p in d.iterdir() if p.is_dir()) for r in run_dirs(sub)]


def pct(xs: list[float]) -> str:
    return " / ".join(f"{100 * x:.1f} %" for x in xs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--scheduler", default=None, help="only runs of this scheduler")
    args = ap.parse_args(argv)
    reports: dict[str, list[dict]] = {}
    for d in args.dirs:
        for r in run_dirs(d):
            rep = stage_bubble_whatif(r)
            if rep is not None and args.scheduler in (None, rep["scheduler"]):
                reports.setdefault(rep["scheduler"], []).append(rep)
    if not reports:
        raise SystemExit("no pipeline run with a timeline.json under " + ", ".join(map(str, args.dirs)))
    for name, reps in reports.items():
        cols = ["real"] + list(VARIANTS)
        rows = []
        for rep in reps:
            figs = [rep["real"]] + [rep["variants"][v] for v in VARIANTS]
            rows.append([rep["run"], f"{1e3 * median(rep['hop_s'] or [0.0]):.2f} / {1e3 * rep['return_s']:.2f}"]
                        + [pct(f["stage_bubble"]) for f in figs])
        n = len(reps[0]["real"]["stage_bubble"])

        def med(key: str) -> list[float]:
            pick = (lambda r: r["real"]) if key == "real" else (lambda r, k=key: r["variants"][k])
            return [median(pick(r)["stage_bubble"][s] for r in reps) for s in range(n)]
        rows.append([f"**median of {len(reps)}**", ""] + [f"**{pct(med(c))}**" for c in cols])
        print(f"\n{name}: stage bubble per stage (real run, then replays)\n")
        print(md_table(["run", "hop / return ms"] + cols, rows))
        walls = {c: median((r["real"] if c == "real" else r["variants"][c])["wall_s"] for r in reps) for c in cols}
        print("\nwall s, medians: " + ", ".join(f"{c} {w:.2f}" for c, w in walls.items()))


if __name__ == "__main__":
    main()
