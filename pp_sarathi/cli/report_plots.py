"""The pictures of ``pp-sarathi report``: metrics against chunk size × P:D (heatmaps when both
are swept, lines when one is), with the paper's optimum P:D* = chunk / (B - 1) marked.

Rows are :func:`pp_sarathi.cli.report.collect`'s DataFrame; points that repeat a setting with
another seed are averaged within a cell, every other varying override gets its own panels/lines.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

CHUNK = "scheduler.chunk_size"
PD = "workload.pd_ratio"
BATCH = "scheduler.max_batch_size"
PP = "parallel.pp"
# Swept seeds are repeats: plots average over them instead of splitting panels/lines.
REPEAT_KEYS = ("workload.seed", "sampling.seed", "model.seed")
OPT_LABEL = "paper optimum P:D = chunk/(B−1), B = ⌈max_batch_size/pp⌉"
AXIS_LABEL = {CHUNK: "chunk size (tokens)", PD: "P:D ratio"}


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
    return None if chunk is None or batch is None or batch <= 1 else chunk / (batch - 1)


def plot_specs(info: dict) -> list[tuple[str, str, list[tuple[str, str]], str]]:
    """(file stem, title, [(column, panel label)], kind) per figure; kind picks the colours:
    'ratio' (1 = no change), 'lower' (lower is better), 'higher'. A compare sweep gets one
    panel per target scheduler, each against the baseline."""
    if info["command"] == "compare":
        base = info.get("baseline", "orca")
        targets = info.get("targets") or [n for n in info.get("schedulers", []) if n != base]
        # The headline target's ratios are the plain ratio_* columns, the others' <name>.ratio_*.
        cols = {t: ("ratio_" if i == 0 else f"{t}.ratio_") for i, t in enumerate(targets)}
        label = (lambda t, what: what) if len(targets) == 1 else (lambda t, what: f"{t}: {what}")
        who = targets[0] if len(targets) == 1 else "each target"
        return [
            ("bubble_reduction", f"pipeline bubble reduction ({base} ÷ {who})",
             [p for t in targets for p in ((cols[t] + "bubble_total", label(t, "total bubble time")),
                                           (cols[t] + "bubble_per_request_p50", label(t, "per-request bubble p50")))],
             "ratio"),
            ("throughput_ratio", f"throughput ratio ({who} ÷ {base})",
             [(cols[t] + "throughput", label(t, "tokens/s")) for t in targets], "ratio"),
            ("tbt_p99", "TBT p99 (ms)",
             [(f"{name}.tbt_p99_ms", name) for name in info.get("schedulers") or [base, *targets]], "lower"),
        ]
    return [
        ("bubble_total", "total pipeline bubble (s)", [("bubble_total_s", "bubble total")], "lower"),
        ("bubble_per_request_p50", "per-request bubble p50 (ms)",
         [("bubble_per_request_p50_ms", "per-request p50")], "lower"),
        ("throughput", "throughput (tokens/s)", [("throughput_tokens_per_s", "tokens/s")], "higher"),
        ("tbt_p99", "TBT p99 (ms)", [("tbt_p99_ms", "TBT p99")], "lower"),
    ]


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(df[column], errors="coerce") if column in df else pd.Series(float("nan"), index=df.index)


def _with_axes(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(_chunk=_numeric(df, f"_axis:{CHUNK}"), _pd=_numeric(df, f"_axis:{PD}"))


def axis_values(df: pd.DataFrame, key: str) -> list[float]:
    return sorted(_numeric(df, f"_axis:{key}").dropna().unique().tolist())


def series(df: pd.DataFrame, info: dict) -> dict[str, pd.DataFrame]:
    """Rows grouped by every varying override other than the two plot axes and the seeds."""
    varying = [k for k in info["overrides"] if k not in (CHUNK, PD, *REPEAT_KEYS)
               and df[k].map(lambda v: json.dumps(v, sort_keys=True, default=str)).nunique() > 1]
    labels = df.apply(lambda r: ", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in varying), axis=1) \
        if len(df) else pd.Series(dtype=object)
    return {label: df[labels == label] for label in dict.fromkeys(labels)}


def grid(rows: pd.DataFrame, column: str, chunks: list[float], pds: list[float]) -> pd.DataFrame:
    """Mean of ``column`` over the finished points of each (chunk, P:D) cell (NaN: none)."""
    ok = _with_axes(rows[rows["status"] == "ok"]).assign(_v=lambda d: _numeric(d, column))
    table = ok.pivot_table(index="_chunk", columns="_pd", values="_v", aggfunc="mean") if len(ok) else pd.DataFrame()
    return table.reindex(index=chunks, columns=pds).astype(float)


def _cell_status(rows: pd.DataFrame, chunk: float, pd_: float) -> str:
    """'failed' / 'incomplete' for a cell without a value because its point did not finish."""
    r = _with_axes(rows)
    states = set(r.loc[(r["_chunk"] == chunk) & (r["_pd"] == pd_), "status"])
    return "failed" if "failed" in states else ("incomplete" if "incomplete" in states else "-")


def _batch(row) -> int | None:
    return requests_per_micro_batch({k.removeprefix("_axis:"): v for k, v in row.items() if k.startswith("_axis:")})


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


def frac_index(values: list[float], x: float) -> float:
    """Fractional position of ``x`` on a categorical axis of sorted ``values`` (log-linear)."""
    import numpy as np
    if len(values) == 1:
        return 0.0
    return float(np.interp(math.log(x), np.log(values), np.arange(len(values)), left=-0.45,
                           right=len(values) - 0.55))


def _mark_optimum(ax, rows: pd.DataFrame, chunks: list[float], pds: list[float]) -> None:
    """The paper's optimum P:D* = chunk / (B - 1) per chunk size (row), B per micro-batch."""
    xs, ys = [], []
    r = _with_axes(rows)
    for i, c in enumerate(chunks):
        batches = {b for _, row in r[r["_chunk"] == c].iterrows() if (b := _batch(row)) is not None}
        if len(batches) != 1 or not (opt := _optimum_pd(c, batches.pop())):
            continue
        xs.append(frac_index(pds, opt))
        ys.append(i)
        beyond = 1 if opt > pds[-1] else (-1 if opt < pds[0] else 0)
        text = {1: f"P:D*={opt:.3g} →", -1: f"← P:D*={opt:.3g}", 0: f"P:D*={opt:.3g}"}[beyond]
        ax.annotate(text, (xs[-1], i), xytext=(-5 if beyond == 1 else 5, -10), textcoords="offset points",
                    ha="right" if beyond == 1 else "left", fontsize=7, color="black",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
    if xs:
        ax.plot(xs, ys, linestyle="--", color="black", linewidth=1, marker="D", markersize=5,
                markerfacecolor="white", label=OPT_LABEL)
        ax.set_xlim(-0.5, len(pds) - 0.5)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=7, frameon=False)


def _heatmap(df, info, spec, out: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    stem, title, panels, kind = spec
    chunks, pds = axis_values(df, CHUNK), axis_values(df, PD)
    groups = series(df, info)
    cells = [(g, col, lab) for g in groups for col, lab in panels]
    n, ncols = len(cells), min(len(cells), 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 + 1.25 * len(pds) * ncols + 0.9 * ncols,
                                                    1.3 + 0.75 * len(chunks) * nrows + 0.6 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (group, column, label) in zip(axes.flat, cells):
        rows = groups[group]
        values = grid(rows, column, chunks, pds).to_numpy()
        norm, cmap = _norm_and_cmap(values.ravel().tolist(), kind)
        cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, norm=norm, aspect="auto", origin="lower")
        for i, c in enumerate(chunks):
            for j, p in enumerate(pds):
                v = values[i, j]
                ax.text(j, i + 0.22, _cell_status(rows, c, p) if math.isnan(v) else f"{v:.2f}", ha="center",
                        va="center", fontsize=8, color="black" if math.isnan(v) or _light(cm(norm(v))) else "white")
        ax.set_xticks(range(len(pds)), [f"{p:g}" for p in pds])
        ax.set_yticks(range(len(chunks)), [f"{c:g}" for c in chunks])
        ax.set_xlabel(AXIS_LABEL[PD])
        ax.set_ylabel(AXIS_LABEL[CHUNK])
        ax.set_title(label + (f"\n{group}" if group else ""), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        _mark_optimum(ax, rows, chunks, pds)
    return _save(fig, title, out / f"heatmap_{stem}.png")


def _lineplot(df, info, spec, axis: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    stem, title, panels, kind = spec
    xs = axis_values(df, axis)
    groups = series(df, info)
    key = "_chunk" if axis == CHUNK else "_pd"
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        for group, rows in groups.items():
            r = _with_axes(rows)
            ok = r[r["status"] == "ok"].assign(_v=lambda d: _numeric(d, column))
            ys = ok.groupby(key)["_v"].mean().reindex(xs).tolist()
            ax.plot(xs, ys, marker="o", label=group or None)
            for x, y in zip(xs, ys):
                if math.isnan(y) and (r.loc[r[key] == x, "status"] != "ok").any():
                    ax.axvline(x, color="red", alpha=0.3, linewidth=6)
        # Paper's optimum on this axis, from the (fixed) other axis and the batch size.
        optima = set()
        for _, row in _with_axes(df).iterrows():
            batch = _batch(row)
            if (opt_pd := _optimum_pd(row[f"_axis:{CHUNK}"], batch)) is None:
                continue
            if axis == PD:
                optima.add(round(opt_pd, 6))
            elif _num(row[f"_axis:{PD}"]) is not None:
                optima.add(round(_num(row[f"_axis:{PD}"]) * (batch - 1), 6))
        for i, opt in enumerate(sorted(optima)):
            ax.axvline(opt, linestyle="--", color="black", linewidth=1, label=None if i else (
                OPT_LABEL if axis == PD else OPT_LABEL.replace("P:D = chunk/(B−1)", "chunk = P:D·(B−1)")))
        if kind == "ratio":
            ax.axhline(1.0, color="grey", linewidth=0.8)
        if len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        other = PD if axis == CHUNK else CHUNK
        ax.set_xlabel(AXIS_LABEL[axis] + f"  ({other.rsplit('.', 1)[-1]} fixed)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, title, out / f"line_{stem}.png")


def _save(fig, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(df: pd.DataFrame, info: dict, out: Path) -> list[Path]:
    """The figures of :func:`plot_specs` that have data, into ``out``; none when neither axis is swept."""
    import matplotlib
    matplotlib.use("Agg")

    swept = [k for k in (CHUNK, PD) if len(axis_values(df, k)) > 1]
    if not swept or not info["command"]:
        return []
    paths = []
    for spec in plot_specs(info):
        if not any(_numeric(df, col).notna().any() for col, _ in spec[2]):
            continue
        paths.append(_heatmap(df, info, spec, out) if len(swept) == 2 else _lineplot(df, info, spec, swept[0], out))
    return paths
