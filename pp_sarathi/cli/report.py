"""``pp-sarathi report SWEEP_DIR``: one CSV row per sweep point, and plots against the swept
chunk size and P:D ratio.

A job dir is any dir under SWEEP_DIR with ``.hydra/overrides.yaml`` (hydra writes it for every
point). Its status is ``ok`` (``compare.json`` or ``results.json``), ``failed`` (``failed.json``,
written when a point fails; the sweep goes on) or ``incomplete`` (neither: still running, or
killed). Writes ``SWEEP_DIR/sweep.csv`` and, when ``scheduler.chunk_size`` and/or
``workload.pd_ratio`` take several values, ``heatmap_*.png`` (both swept) or ``line_*.png`` (one
swept), marking the paper's optimum P:D = chunk / (B - 1), from which on every decode
piggybacks on a prefill chunk (DESIGN.md §5). B is the number of requests one micro-batch holds:
``scheduler.max_batch_size`` counts requests over all ``parallel.pp`` micro-batches in flight, so
B = ceil(max_batch_size / pp) (= max_batch_size at pp=1).

A compare sweep has a ``ratio_*`` column per ratio of the headline target (compare.json's
``ratios``) and ``<name>.ratio_*`` for every further target, each against the baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from .report_plots import BATCH, CHUNK, PD, PP, _num, _optimum_pd, requests_per_micro_batch, write_plots

AXES = (CHUNK, PD, BATCH, PP)
# results.json path of each CSV metric column (the per-stage bubbles go after bubble_total_s).
METRICS = {"wall_s": ("wall_s",), "throughput_tokens_per_s": ("throughput", "tokens_per_s"),
           "decode_tokens_per_s": ("throughput", "decode_tokens_per_s"), "bubble_total_s": ("bubble", "total_s"),
           "bubble_per_request_p50_ms": ("bubble", "per_request_ms", "p50"),
           "bubble_per_request_p99_ms": ("bubble", "per_request_ms", "p99"),
           "ttft_p50_ms": ("latency", "ttft_ms", "p50"), "ttft_p99_ms": ("latency", "ttft_ms", "p99"),
           "tbt_p50_ms": ("latency", "tbt_ms", "p50"), "tbt_p99_ms": ("latency", "tbt_ms", "p99"),
           "e2e_p50_ms": ("latency", "e2e_ms", "p50")}


def _get(d, path):
    for part in path:
        d = d.get(part) if isinstance(d, dict) else None
    return d


def metrics(results: dict) -> dict:
    """The numbers of one results.json that go into a CSV row."""
    row = {}
    for column, path in METRICS.items():
        row[column] = _get(results, path)
        if column == "bubble_total_s":
            row.update({f"stage{s['stage']}_bubble_s": s.get("bubble_s") for s in results.get("stages", [])})
    return row


def _overrides(job: Path) -> dict:
    """The point's overrides as hydra parses them (lists and dicts kept as written)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [str(x) for x in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []]
    out = {}
    for o in OverridesParser.create().parse_overrides(lines):
        if o.key_or_group.startswith("hydra.") or o.key_or_group == "command":
            continue
        value = o.value()
        out[o.key_or_group] = value if isinstance(value, (int, float, str, bool, type(None))) \
            else o.input_line.partition("=")[2]
    return out


def _job_config(job: Path) -> dict:
    try:
        return yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
    except Exception:  # noqa: BLE001 - missing or unreadable: the overrides still say a lot
        return {}


def find_jobs(sweep_dir: Path) -> list[Path]:
    jobs = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    return sorted(jobs, key=lambda p: [(0, int(x), "") if x.isdigit() else (1, 0, x)
                                       for x in p.relative_to(sweep_dir).parts])


def _compare_row(comp: dict, cfg: dict, info: dict) -> dict:
    names = list(comp.get("schedulers") or {})
    baseline = comp.get("baseline") or _get(cfg, ("compare", "baseline")) or (names[0] if names else None)
    info["baseline"] = baseline
    by_target = comp.get("ratios_by_scheduler") or {}
    target = comp.get("target") or next((n for n in names if n != baseline), None)
    row = {f"ratio_{k}": v for k, v in (comp.get("ratios") or {}).items()}
    for name, ratios in by_target.items():
        if name != target:
            row.update({f"{name}.ratio_{k}": v for k, v in ratios.items()})
    for name in names:
        row.update({f"{name}.{k}": v for k, v in metrics(comp["schedulers"][name] or {}).items()})
    info["schedulers"] = list(dict.fromkeys([*info["schedulers"], *names]))
    info["targets"] = [n for n in dict.fromkeys([*info["targets"], target, *by_target]) if n]
    return row


def _row(job: Path, sweep_dir: Path, info: dict) -> dict:
    cfg, overrides = _job_config(job), _overrides(job)
    command = "compare" if (job / "compare.json").exists() else cfg.get("command") or (
        "run" if (job / "results.json").exists() else None)
    info["command"] = info["command"] or command
    info["overrides"] += [k for k in overrides if k not in info["overrides"]]
    axes = {k: overrides.get(k, _get(cfg, k.split("."))) for k in AXES}
    row = {"job": str(job.relative_to(sweep_dir)) or ".", "command": command, **overrides, "status": None,
           "paper_optimum_pd": _optimum_pd(axes[CHUNK], requests_per_micro_batch(axes)),
           **{f"_axis:{k}": v for k, v in axes.items()}}
    if (job / "failed.json").exists():
        try:
            error = json.loads((job / "failed.json").read_text()).get("error", "")
        except Exception:  # noqa: BLE001
            error = "unreadable failed.json"
        return {**row, "status": "failed", "error": error}
    if (job / "compare.json").exists():
        return {**row, "status": "ok", **_compare_row(json.loads((job / "compare.json").read_text()), cfg, info)}
    if (job / "results.json").exists():
        return {**row, "status": "ok", **metrics(json.loads((job / "results.json").read_text()))}
    return {**row, "status": "incomplete"}


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, dict]:
    """One row per job (``_axis:<key>`` columns hold the plot axes even when not overridden),
    plus what plotting needs: command, overridden keys, schedulers, baseline and targets."""
    info = {"command": None, "overrides": [], "schedulers": [], "targets": []}
    rows = [_row(job, sweep_dir, info) for job in find_jobs(sweep_dir)]
    if info["schedulers"] and "baseline" not in info:
        info["baseline"] = info["schedulers"][0]
    df = pd.DataFrame(rows, dtype=object)
    return df.astype(object).where(df.notna(), None), info


def write_csv(df: pd.DataFrame, info: dict, path: Path) -> list[str]:
    """sweep.csv: job, command, the overrides, status, the optimum, the metrics, error."""
    fixed = ["job", "command", *info["overrides"], "status", "paper_optimum_pd"]
    metric_cols = [c for c in df.columns if c not in fixed and c != "error" and not c.startswith("_axis:")]
    columns = [*fixed, *metric_cols, "error"]

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.6g}" if isinstance(v, float) else v

    df.reindex(columns=columns).map(fmt).to_csv(path, index=False, lineterminator="\r\n")  # as csv.writer
    return columns


def _print_table(df: pd.DataFrame, info: dict) -> None:
    keys = [k for k in info["overrides"] if df[k].astype(str).nunique() > 1]
    if info["command"] == "compare":
        cols = {"bubble red.": "ratio_bubble_total", "req-bubble red.": "ratio_bubble_per_request_p50",
                "thr. ratio": "ratio_throughput"}
        cols.update({f"{t} TBT p99": f"{t}.tbt_p99_ms" for t in info["targets"][:1]})  # the headline target
    else:
        cols = {"tok/s": "throughput_tokens_per_s", "bubble s": "bubble_total_s",
                "req-bubble p50": "bubble_per_request_p50_ms", "TBT p99": "tbt_p99_ms"}
    table = [["job", *[k.rsplit(".", 1)[-1] for k in keys], "status", *cols]]
    for _, r in df.iterrows():
        table.append([r["job"], *["" if r[k] is None else str(r[k]) for k in keys], r["status"],
                      *[("" if (v := _num(r.get(c))) is None else f"{v:.2f}") for c in cols.values()]])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def report(sweep_dir: Path, plots: bool = True) -> tuple[Path, list[Path], pd.DataFrame, dict]:
    """Write sweep.csv (and the plots); returns (csv path, plot paths, rows, info)."""
    df, info = collect(sweep_dir)
    csv_path = sweep_dir / "sweep.csv"
    write_csv(df, info, csv_path)
    paths = write_plots(df, info, sweep_dir) if plots else []
    return csv_path, paths, df, info


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pp-sarathi report",
        description="Summarise a sweep (hydra multirun dir) into sweep.csv and plots.")
    parser.add_argument("sweep_dir", help="the sweep dir (multirun/<date>-<id>) or a single run dir")
    parser.add_argument("--no-plots", action="store_true", help="write sweep.csv only")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        print(f"pp-sarathi report: error: {sweep_dir} is not a directory", file=sys.stderr)
        return 2
    if not find_jobs(sweep_dir):
        print(f"pp-sarathi report: error: no jobs under {sweep_dir} (no .hydra/overrides.yaml found)",
              file=sys.stderr)
        return 2
    csv_path, paths, df, info = report(sweep_dir, plots=not args.no_plots)
    _print_table(df, info)
    counts = df["status"].value_counts()
    print(f"{len(df)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in ("ok", "failed", "incomplete") if s in counts))
    print(f"wrote {csv_path}")
    for p in paths:
        print(f"wrote {p}")
    if not paths and not args.no_plots:
        print(f"no plots: {CHUNK} and {PD} each take one value in this sweep")
    return 0
