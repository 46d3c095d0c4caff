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
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

CHUNK = "scheduler.chunk_size"
PD = "workload.pd_ratio"
BATCH = "scheduler.max_batch_size"
PP = "parallel.pp"
# Swept seeds are repeats: plots average over them instead of splitting panels/lines.
REPEAT_KEYS = ("workload.seed", "sampling.seed", "model.seed")
OPT_LABEL = "paper optimum P:D = chunk/(B−1), B = ⌈max_batch_size/pp⌉"
AXIS_LABEL = {CHUNK: "chunk size (tokens)", PD: "P:D ratio"}


# ---------------------------------------------------------------------------------------------
# Collecting
# ---------------------------------------------------------------------------------------------
def _load_yaml(path: Path):
    import yaml
    return yaml.safe_load(path.read_text())


def _parse_value(text: str):
    try:
        import yaml
        value = yaml.safe_load(text)
    except Exception:  # noqa: BLE001
        return text
    return value if isinstance(value, (int, float, str, bool)) or value is None else text


def _overrides(job: Path) -> "OrderedDict[str, object]":
    out: OrderedDict[str, object] = OrderedDict()
    for item in _load_yaml(job / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key == "command":
            continue
        out[key] = _parse_value(value)
    return out


def _config_value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _job_config(job: Path) -> dict:
    path = job / ".hydra" / "config.yaml"
    try:
        return _load_yaml(path) or {} if path.exists() else {}
    except Exception:  # noqa: BLE001
        return {}


def metrics(results: dict) -> "OrderedDict[str, float | None]":
    """The numbers of one results.json that go into a CSV row."""
    thr, lat, bub = results.get("throughput", {}), results.get("latency", {}), results.get("bubble", {})

    def pct(d, name, p):
        return (d.get(name) or {}).get(p)

    row: OrderedDict[str, float | None] = OrderedDict()
    row["wall_s"] = results.get("wall_s")
    row["throughput_tokens_per_s"] = thr.get("tokens_per_s")
    row["decode_tokens_per_s"] = thr.get("decode_tokens_per_s")
    row["bubble_total_s"] = bub.get("total_s")
    for st in results.get("stages", []):
        row[f"stage{st['stage']}_bubble_s"] = st.get("bubble_s")
    row["bubble_per_request_p50_ms"] = pct(bub, "per_request_ms", "p50")
    row["bubble_per_request_p99_ms"] = pct(bub, "per_request_ms", "p99")
    row["ttft_p50_ms"] = pct(lat, "ttft_ms", "p50")
    row["ttft_p99_ms"] = pct(lat, "ttft_ms", "p99")
    row["tbt_p50_ms"] = pct(lat, "tbt_ms", "p50")
    row["tbt_p99_ms"] = pct(lat, "tbt_ms", "p99")
    row["e2e_p50_ms"] = pct(lat, "e2e_ms", "p50")
    return row


def find_jobs(sweep_dir: Path) -> list[Path]:
    jobs = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"}

    def order(p: Path):
        rel = p.relative_to(sweep_dir).parts
        return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel]

    return sorted(jobs, key=order)


def collect(sweep_dir: Path) -> tuple[list[dict], dict]:
    """Rows (one per job) plus facts for plotting: command, baseline/target scheduler names."""
    rows, info = [], {"command": None, "schedulers": []}
    for job in find_jobs(sweep_dir):
        cfg = _job_config(job)
        row: dict = OrderedDict()
        row["job"] = str(job.relative_to(sweep_dir)) or "."
        command = "compare" if (job / "compare.json").exists() else cfg.get("command") or (
            "run" if (job / "results.json").exists() else None)
        row["command"] = command
        info["command"] = info["command"] or command
        overrides = _overrides(job)
        row.update(overrides)
        # The plotting axes (and the batch size of the optimum) even when not overridden.
        row["_axes"] = {k: overrides.get(k, _config_value(cfg, k)) for k in (CHUNK, PD, BATCH, PP)}
        row["_overrides"] = list(overrides)
        row["status"] = None  # placed here; filled below
        row["paper_optimum_pd"] = _optimum_pd(row["_axes"][CHUNK], requests_per_micro_batch(row["_axes"]))
        if (job / "failed.json").exists():
            row["status"] = "failed"
            try:
                row["error"] = json.loads((job / "failed.json").read_text()).get("error", "")
            except Exception:  # noqa: BLE001
                row["error"] = "unreadable failed.json"
        elif (job / "compare.json").exists():
            row["status"] = "ok"
            comp = json.loads((job / "compare.json").read_text())
            for key, value in (comp.get("ratios") or {}).items():
                row[f"ratio_{key}"] = value
            for name, res in (comp.get("schedulers") or {}).items():
                if name not in info["schedulers"]:
                    info["schedulers"].append(name)
                for key, value in metrics(res or {}).items():
                    row[f"{name}.{key}"] = value
            baseline = _config_value(cfg, "compare.baseline")
            if baseline:
                info["baseline"] = baseline
        elif (job / "results.json").exists():
            row["status"] = "ok"
            row.update(metrics(json.loads((job / "results.json").read_text())))
        else:
            row["status"] = "incomplete"
        rows.append(row)
    if info["schedulers"] and "baseline" not in info:
        info["baseline"] = info["schedulers"][0]
    return rows, info


def write_csv(rows: list[dict], path: Path) -> list[str]:
    override_cols: list[str] = []
    metric_cols: list[str] = []
    for row in rows:
        for k in row.get("_overrides", []):
            if k not in override_cols:
                override_cols.append(k)
    fixed = {"job", "command", "status", "error", "_axes", "_overrides", "paper_optimum_pd"}
    for row in rows:
        for k in row:
            if k not in fixed and k not in override_cols and k not in metric_cols:
                metric_cols.append(k)
    columns = ["job", "command", *override_cols, "status", "paper_optimum_pd", *metric_cols, "error"]

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"
        return v

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow([fmt(row.get(c)) for c in columns])
    return columns


# ---------------------------------------------------------------------------------------------
# Plotting
# ---------------------------------------------------------------------------------------------
def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def requests_per_micro_batch(axes: dict) -> int | None:
    """B of the paper's rule: scheduler.max_batch_size counts requests over all ``pp`` micro-batches
    in flight, and each micro-batch takes at most ceil(max_batch_size / pp) of them
    (scheduler/base.py), so that is the batch one prefill chunk shares with B - 1 decodes."""
    batch, pp = _num(axes.get(BATCH)), _num(axes.get(PP)) or 1
    return None if batch is None else math.ceil(batch / max(pp, 1))


def _optimum_pd(chunk, batch) -> float | None:
    """P:D from which all decodes piggyback on prefill chunks: chunk / (B - 1) (paper §4.3)."""
    chunk, batch = _num(chunk), _num(batch)
    if chunk is None or batch is None or batch <= 1:
        return None
    return chunk / (batch - 1)


def plot_specs(info: dict) -> list[tuple[str, str, list[tuple[str, str]], str]]:
    """(file stem, title, [(column, panel label)], kind) per figure; kind picks the colours:
    'ratio' (1 = no change), 'lower' (lower is better), 'higher'."""
    if info["command"] == "compare":
        base = info.get("baseline", "orca")
        target = "sarathi"
        return [
            ("bubble_reduction", f"pipeline bubble reduction ({base} ÷ {target})",
             [("ratio_bubble_total", "total bubble time"),
              ("ratio_bubble_per_request_p50", "per-request bubble p50")], "ratio"),
            ("throughput_ratio", f"throughput ratio ({target} ÷ {base})",
             [("ratio_throughput", "tokens/s")], "ratio"),
            ("tbt_p99", "TBT p99 (ms)",
             [(f"{name}.tbt_p99_ms", name) for name in info.get("schedulers") or [base, target]], "lower"),
        ]
    return [
        ("bubble_total", "total pipeline bubble (s)", [("bubble_total_s", "bubble total")], "lower"),
        ("bubble_per_request_p50", "per-request bubble p50 (ms)",
         [("bubble_per_request_p50_ms", "per-request p50")], "lower"),
        ("throughput", "throughput (tokens/s)", [("throughput_tokens_per_s", "tokens/s")], "higher"),
        ("tbt_p99", "TBT p99 (ms)", [("tbt_p99_ms", "TBT p99")], "lower"),
    ]


def _axis_values(rows, key) -> list[float]:
    return sorted({v for r in rows if (v := _num(r["_axes"].get(key))) is not None})


def _series(rows: list[dict]) -> "OrderedDict[str, list[dict]]":
    """Rows grouped by every varying override other than the two plot axes and the seeds
    (repeats, averaged within a cell)."""
    varying = []
    keys = []
    for r in rows:
        for k in r["_overrides"]:
            if k not in keys:
                keys.append(k)
    for k in keys:
        if k in (CHUNK, PD) or k in REPEAT_KEYS:
            continue
        if len({json.dumps(r.get(k), sort_keys=True, default=str) for r in rows}) > 1:
            varying.append(k)
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for r in rows:
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={r.get(k)}" for k in varying)
        groups.setdefault(label, []).append(r)
    return groups


def _cell(rows, column, chunk, pd):
    vals = [v for r in rows if _num(r["_axes"].get(CHUNK)) == chunk and _num(r["_axes"].get(PD)) == pd
            and r["status"] == "ok" and (v := _num(r.get(column))) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _cell_status(rows, chunk, pd) -> str:
    """'failed' / 'incomplete' for a cell without a value because its point did not finish."""
    states = {r["status"] for r in rows if _num(r["_axes"].get(CHUNK)) == chunk and _num(r["_axes"].get(PD)) == pd}
    return "failed" if "failed" in states else ("incomplete" if "incomplete" in states else "-")


def _fmt_axis(v: float) -> str:
    return f"{v:g}"


def _norm_and_cmap(values, kind):
    from matplotlib.colors import Normalize, TwoSlopeNorm
    finite = [v for v in values if not math.isnan(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if lo == hi:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    if kind == "ratio":
        if lo < 1 < hi:
            return TwoSlopeNorm(vmin=lo, vcenter=1.0, vmax=hi), "RdYlGn"
        return Normalize(lo, hi), ("Greens" if lo >= 1 else "Reds_r")
    return Normalize(lo, hi), ("viridis_r" if kind == "lower" else "viridis")


def _light(rgba) -> bool:
    r, g, b = rgba[:3]
    return 0.299 * r + 0.587 * g + 0.114 * b > 0.5


def _frac_index(values: list[float], x: float) -> float:
    """Fractional position of ``x`` on a categorical axis of sorted ``values`` (log-linear)."""
    import numpy as np
    if len(values) == 1:
        return 0.0
    logs = np.log(values)
    return float(np.interp(math.log(x), logs, np.arange(len(values)), left=-0.45, right=len(values) - 0.55))


def _heatmap(rows, spec, out: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    stem, title, panels, kind = spec
    chunks, pds = _axis_values(rows, CHUNK), _axis_values(rows, PD)
    groups = _series(rows)
    cells = [(g, col, lab) for g in groups for col, lab in panels]
    n = len(cells)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 + 1.25 * len(pds) * ncols + 0.9 * ncols,
                                                    1.3 + 0.75 * len(chunks) * nrows + 0.6 * nrows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (group, column, label) in zip(axes.flat, cells):
        grows = groups[group]
        grid = np.array([[_cell(grows, column, c, p) for p in pds] for c in chunks])
        norm, cmap = _norm_and_cmap(grid.ravel().tolist(), kind)
        cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cm, norm=norm, aspect="auto", origin="lower")
        for i, c in enumerate(chunks):
            for j, p in enumerate(pds):
                v = grid[i, j]
                txt = _cell_status(grows, c, p) if math.isnan(v) else f"{v:.2f}"
                ax.text(j, i + 0.22, txt, ha="center", va="center", fontsize=8,
                        color="black" if math.isnan(v) or _light(cm(norm(v))) else "white")
        ax.set_xticks(range(len(pds)), [_fmt_axis(p) for p in pds])
        ax.set_yticks(range(len(chunks)), [_fmt_axis(c) for c in chunks])
        ax.set_xlabel(AXIS_LABEL[PD])
        ax.set_ylabel(AXIS_LABEL[CHUNK])
        ax.set_title(label + (f"\n{group}" if group else ""), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        # Paper's optimum: P:D* = chunk / (B - 1) per chunk size (row), B per micro-batch.
        xs, ys = [], []
        for i, c in enumerate(chunks):
            batches = {requests_per_micro_batch(r["_axes"]) for r in grows if _num(r["_axes"].get(CHUNK)) == c}
            batches.discard(None)
            if len(batches) != 1:
                continue
            opt = _optimum_pd(c, batches.pop())
            if opt:
                xs.append(_frac_index(pds, opt))
                ys.append(i)
                beyond = 1 if opt > pds[-1] else (-1 if opt < pds[0] else 0)
                text = {1: f"P:D*={opt:.3g} →", -1: f"← P:D*={opt:.3g}", 0: f"P:D*={opt:.3g}"}[beyond]
                ax.annotate(text, (xs[-1], i), xytext=(-5 if beyond == 1 else 5, -10),
                            textcoords="offset points", ha="right" if beyond == 1 else "left",
                            fontsize=7, color="black",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
        if xs:
            ax.plot(xs, ys, linestyle="--", color="black", linewidth=1, marker="D", markersize=5,
                    markerfacecolor="white", label=OPT_LABEL)
            ax.set_xlim(-0.5, len(pds) - 0.5)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / f"heatmap_{stem}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _lineplot(rows, spec, axis: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    stem, title, panels, kind = spec
    xs = _axis_values(rows, axis)
    groups = _series(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    other = PD if axis == CHUNK else CHUNK
    for ax, (column, label) in zip(axes[0], panels):
        for group, grows in groups.items():
            ys = []
            for x in xs:
                vals = [v for r in grows if _num(r["_axes"].get(axis)) == x and r["status"] == "ok"
                        and (v := _num(r.get(column))) is not None]
                ys.append(sum(vals) / len(vals) if vals else float("nan"))
            ax.plot(xs, ys, marker="o", label=group or None)
            for x, y in zip(xs, ys):
                if math.isnan(y) and any(r["status"] != "ok" for r in grows if _num(r["_axes"].get(axis)) == x):
                    ax.axvline(x, color="red", alpha=0.3, linewidth=6)
        # Paper's optimum on this axis, from the (fixed) other axis and the batch size.
        optima = set()
        for r in rows:
            chunk, pd, batch = r["_axes"].get(CHUNK), r["_axes"].get(PD), requests_per_micro_batch(r["_axes"])
            opt_pd = _optimum_pd(chunk, batch)
            if opt_pd is None:
                continue
            if axis == PD:
                optima.add(round(opt_pd, 6))
            elif _num(pd) is not None:
                optima.add(round(_num(pd) * (_num(batch) - 1), 6))
        for i, opt in enumerate(sorted(optima)):
            ax.axvline(opt, linestyle="--", color="black", linewidth=1,
                       label=((OPT_LABEL if axis == PD else OPT_LABEL.replace("P:D = chunk/(B−1)", "chunk = P:D·(B−1)"))
                              if i == 0 else None))
        if kind == "ratio":
            ax.axhline(1.0, color="grey", linewidth=0.8)
        if len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [_fmt_axis(x) for x in xs])
        ax.set_xlabel(AXIS_LABEL[axis] + (f"  ({other.rsplit('.', 1)[-1]} fixed)"))
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / f"line_{stem}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(rows: list[dict], info: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")

    swept = [k for k in (CHUNK, PD) if len(_axis_values(rows, k)) > 1]
    if not swept or not info["command"]:
        return []
    paths = []
    for spec in plot_specs(info):
        if not any(_num(r.get(col)) is not None for r in rows for col, _ in spec[2]):
            continue
        paths.append(_heatmap(rows, spec, out) if len(swept) == 2 else _lineplot(rows, spec, swept[0], out))
    return paths


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------
def _print_table(rows: list[dict], info: dict) -> None:
    keys = []
    for r in rows:
        for k in r["_overrides"]:
            if k not in keys and len({str(x.get(k)) for x in rows}) > 1:
                keys.append(k)
    if info["command"] == "compare":
        cols = [("bubble red.", "ratio_bubble_total"), ("req-bubble red.", "ratio_bubble_per_request_p50"),
                ("thr. ratio", "ratio_throughput"), ("sarathi TBT p99", "sarathi.tbt_p99_ms")]
    else:
        cols = [("tok/s", "throughput_tokens_per_s"), ("bubble s", "bubble_total_s"),
                ("req-bubble p50", "bubble_per_request_p50_ms"), ("TBT p99", "tbt_p99_ms")]
    header = ["job", *[k.rsplit(".", 1)[-1] for k in keys], "status", *[c for c, _ in cols]]
    table = [header]
    for r in rows:
        vals = [r["job"], *[str(r.get(k, "")) for k in keys], r["status"]]
        vals += [("" if (v := _num(r.get(c))) is None else f"{v:.2f}") for _, c in cols]
        table.append(vals)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def report(sweep_dir: Path, plots: bool = True) -> tuple[Path, list[Path], list[dict], dict]:
    """Write sweep.csv (and the plots); returns (csv path, plot paths, rows, info)."""
    rows, info = collect(sweep_dir)
    csv_path = sweep_dir / "sweep.csv"
    write_csv(rows, csv_path)
    paths = write_plots(rows, info, sweep_dir) if plots else []
    return csv_path, paths, rows, info


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
    csv_path, paths, rows, info = report(sweep_dir, plots=not args.no_plots)
    _print_table(rows, info)
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("ok", "failed", "incomplete")}
    print(f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    print(f"wrote {csv_path}")
    for p in paths:
        print(f"wrote {p}")
    if not paths and not args.no_plots:
        print(f"no plots: {CHUNK} and {PD} each take one value in this sweep")
    return 0
