"""Held-out error of the measured predictor: fit a profile without some of its rows and
predict those rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model.arch import ModelArch
from .measured import ProfileCosts
from .profile_csv import LINEAR_OPS, arch_from_profile, layer_row_shape, link_row_shape, read_profile, stage_row_shape

# Held out within the (x, y) grid of the two-dimensional attention sweeps.
_GRID_2D = {"attn_prefill": ("chunk", "cached"), "attn_decode": ("batch", "context")}


def predict_row(m: ProfileCosts, r: dict) -> float | None:
    """What ``m`` predicts for the point of profile row ``r`` (None: an op it does not model)."""
    op = r["op"]
    if op == "linear" or op in LINEAR_OPS:
        return m.linear_op(op, r["tokens"])
    if op == "attn_prefill":
        return m.attn_prefill(r["chunk"], r["cached"])
    if op == "attn_decode":
        return m.attn_decode_padded(r["batch"], r["context"])
    if op == "embed":
        return m.embed(r["tokens"])
    if op == "lm_head":
        return m.lm_head(r["tokens"])
    if op == "sample":
        return m.sample(r["tokens"])
    if op == "overhead":
        return m.overhead(r["batch"], r["tokens"])
    if op == "p2p":
        return m.p2p(r["bytes"])
    if op.startswith("link_"):
        return m.link_cost(op[5:], link_row_shape(r))
    if op == "layer":
        b = layer_row_shape(r)
        return m.linear(b.num_tokens) + m.misc(b.num_tokens) + m.attention(b)
    if op == "stage":
        return m.stage_step(stage_row_shape(r), max(1, r["layers"]), r["stage"])
    return None


def held_out_rows(rows: list[dict], every: int = 3) -> set[int]:
    """Indices of the rows to hold out: every ``every``-th one of each op, interior points only
    for the interpolated ops (no extrapolation test); half of the ``layer`` and ``stage`` rows."""
    held: set[int] = set()
    by_op: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_op.setdefault(r["op"], []).append(i)
    for op, idx in by_op.items():
        if op in _GRID_2D:
            kx, ky = _GRID_2D[op]
            xs = sorted({rows[i][kx] for i in idx})
            inner = []
            for i in idx:
                ys = sorted(rows[j][ky] for j in idx if rows[j][kx] == rows[i][kx])
                if rows[i][kx] not in (xs[0], xs[-1]) and rows[i][ky] not in (ys[0], ys[-1]):
                    inner.append(i)
            cand = inner[::every]
        elif op in ("overhead", "layer", "stage") or op.startswith("link_"):
            cand = idx[1::2] if op in ("layer", "stage") else idx[1::every]
        else:
            key = "bytes" if op == "p2p" else "tokens"
            order = sorted(idx, key=lambda i: rows[i][key])
            cand = order[1:-1][::every]
        held.update(cand)
    return held


def _summary(e) -> dict:
    a = np.abs(np.asarray(e))
    return {"held_out": int(a.size), "mean_abs_rel_err": float(a.mean()) if a.size else None,
            "max_abs_rel_err": float(a.max()) if a.size else None,
            "median_abs_rel_err": float(np.median(a)) if a.size else None}


def holdout_errors(path_or_rows, arch: ModelArch | None = None, every: int = 3, statistic: str = "median") -> dict:
    """Fit on all profile rows but the held-out ones (:func:`held_out_rows`), predict those, and
    report relative errors per op and over all: ``{op: {held_out, mean_abs_rel_err,
    max_abs_rel_err, median_abs_rel_err}, "all": {...}}``.

    ``layer`` / ``stage`` rows (whole decoder layers / stage steps on mixed batches) check the
    additive composition: half of them fit misc(T), the other half are held out.
    """
    rows = read_profile(path_or_rows, statistic) if isinstance(path_or_rows, (str, Path)) else list(path_or_rows)
    arch = arch or arch_from_profile(rows[0])
    held = held_out_rows(rows, every)
    model = ProfileCosts(arch, str(rows[0].get("dtype")), rows, exclude=held)
    errs: dict[str, list[float]] = {}
    for i in sorted(held):
        r = rows[i]
        pred = predict_row(model, r)
        if pred is None or r["seconds"] <= 0:
            continue
        errs.setdefault(r["op"], []).append((pred - r["seconds"]) / r["seconds"])
    out = {op: _summary(e) for op, e in sorted(errs.items())}
    out["all"] = _summary(np.concatenate([np.asarray(v) for v in errs.values()]) if errs else np.zeros(0))
    return out
