"""The profile CSV: its columns, reading and writing it, and what a row stands for.

A profile (``pp-sarathi profile``, :mod:`pp_sarathi.sim.profile`) times the ops of one model
shape on one device; one row per measured point.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..model.arch import ModelArch
from .shape import BatchShape

PROFILE_COLUMNS = ["op", "tokens", "chunk", "cached", "batch", "context", "bytes", "prefills", "layers", "stage",
                   "jitter", "seconds", "seconds_mean", "seconds_min", "repeats", "device", "dtype", "threads", "hidden_size",
                   "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "cores", "torch"]
# Older profiles timed the four linear layers one by one instead of as one ``linear`` op.
LINEAR_OPS = ("linear_qkv", "linear_o", "linear_gate_up", "linear_down")
INT_COLUMNS = ("tokens", "chunk", "cached", "batch", "context", "bytes", "prefills", "layers", "repeats", "threads",
               "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "cores")
STATISTICS = ("median", "mean", "min")


def read_profile(path: str | Path, statistic: str = "median") -> list[dict]:
    """Rows of a profile CSV. ``seconds`` is each point's ``median`` timed call (the default),
    or with ``statistic="mean"`` / ``"min"`` the mean (``seconds_mean``) / fastest call
    (``seconds_min``). Profiles without ``seconds_mean`` stored the mean in ``seconds``."""
    if statistic not in STATISTICS:
        raise ValueError(f"profile statistic must be median, mean or min, not {statistic!r}")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in INT_COLUMNS:
                r[k] = int(float(r[k])) if r.get(k) not in (None, "") else 0
            r["stage"] = r.get("stage") or ""
            r["seconds"] = float(r["seconds"])
            r["jitter"] = float(r["jitter"]) if r.get("jitter") not in (None, "") else 0.0
            for k in ("seconds_min", "seconds_mean"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else r["seconds"]
            rows.append(r)
    if not rows:
        raise ValueError(f"profile {path} has no rows")
    if statistic != "median":
        for r in rows:
            r["seconds"] = r["seconds_min" if statistic == "min" else "seconds_mean"]
    return rows


def write_profile(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` with :data:`PROFILE_COLUMNS` (missing columns empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROFILE_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in PROFILE_COLUMNS})
    return path


def profile_shape(r: dict) -> dict:
    """The model shape a profile row was measured for (compared with the configured model)."""
    return {k: r.get(k) for k in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size")}


def arch_from_profile(r: dict) -> ModelArch:
    """A one-layer architecture of the shape a profile row was measured for."""
    return ModelArch.from_shape(vocab_size=r["vocab_size"], hidden_size=r["hidden_size"],
                                intermediate_size=r["intermediate_size"], num_layers=1, num_heads=r["num_heads"],
                                num_kv_heads=r["num_kv_heads"], head_dim=r["head_dim"],
                                max_position_embeddings=1 << 20, eos_token_ids=())


def stage_row_shape(r: dict) -> BatchShape:
    """A ``stage`` row: ``prefills`` chunks (chunk over cached) plus ``batch`` decodes at
    ``context``; every part samples (as a micro-batch of final chunks and decodes)."""
    n_pre = (r.get("prefills") or 1) if r["chunk"] else 0
    prefills = [(r["chunk"], r["cached"])] * n_pre
    return BatchShape.of(prefills, [r["context"]] * r["batch"])


def layer_row_shape(r: dict) -> BatchShape:
    """A ``layer`` row: one prefill chunk (chunk, cached) plus ``batch`` decodes at ``context``."""
    prefills = [(r["chunk"], r["cached"])] if r["chunk"] else []
    decodes = [r["context"]] * r["batch"]
    return BatchShape(r["chunk"] + r["batch"], len(prefills) + len(decodes), prefills, decodes, 0, 0)


def link_row_shape(r: dict) -> BatchShape:
    """A ``link_*`` row: only its token and part counts matter to the transport."""
    return BatchShape(r["tokens"], r["batch"], [], [], r["batch"], 0)
