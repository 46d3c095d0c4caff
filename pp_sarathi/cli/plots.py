"""Pictures (matplotlib lives here, out of the core): pipeline timelines as Gantt charts."""
from __future__ import annotations

from pathlib import Path

from ..metrics.records import RunOutcome

KIND_COLOURS = {"prefill": "#d62728", "hybrid": "#2ca02c", "decode": "#1f77b4"}
DRIVER_COLOUR = "#7f7f7f"


def _draw(ax, out: RunOutcome, title: str) -> None:
    kinds = {b.batch_id: b.kind for b in out.batches}
    spans: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for r in out.stage_records:
        key = (r.stage, kinds.get(r.batch_id, "decode"))
        spans.setdefault(key, []).append((r.compute_start, r.compute_end - r.compute_start))
    # One broken_barh per (stage, kind): fast even for tens of thousands of micro-batches.
    for (stage, kind), bars in spans.items():
        ax.broken_barh(bars, (stage - 0.4, 0.8), facecolors=KIND_COLOURS[kind], edgecolor="black",
                       linewidth=0.2)
    rows = [f"stage {s}" for s in range(out.num_stages)]
    if out.driver_spans:  # the driver's own work, on a row below the stages
        ax.broken_barh([(d.start, d.end - d.start) for d in out.driver_spans], (out.num_stages - 0.3, 0.6),
                       facecolors=DRIVER_COLOUR, linewidth=0)
        rows.append("driver")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("time (s)")
    ax.set_title(title, fontsize=10)


def _legend(fig) -> None:
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()],
               loc="upper right", fontsize=8, ncol=3)


def write_timeline(out: RunOutcome, path: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.6 * (out.num_stages + bool(out.driver_spans))))
    _draw(ax, out, title or "pipeline timeline (compute per micro-batch; gaps are bubbles)")
    _legend(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_side_by_side(outcomes: dict[str, RunOutcome], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(outcomes)
    stages = max(o.num_stages for o in outcomes.values())
    fig, axes = plt.subplots(n, 1, figsize=(12, (1.0 + 0.6 * stages) * n), squeeze=False)
    end = max((r.compute_end for o in outcomes.values() for r in o.stage_records), default=1.0)
    for ax, (name, out) in zip(axes[:, 0], outcomes.items()):
        _draw(ax, out, f"{name}: {out.wall_s:.1f} s")
        ax.set_xlim(0, end * 1.01)
    _legend(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
