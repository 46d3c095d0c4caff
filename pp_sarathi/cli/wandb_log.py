"""wandb logging from rank 0 (offline by default); every file wandb writes stays in the run dir.

One wandb run per executed pipeline run (``compare`` makes one per scheduler, named
``<name>/<scheduler>``). History: one step per micro-batch (iteration) with each stage's
compute, receive-wait, send and bubble time; summary: throughput, latency, bubbles; media: the
timeline picture; files: the Perfetto trace. Sweep points share the wandb group (the sweep
dir's name unless ``logging.wandb.group`` is set).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from pathlib import Path

from ..metrics.bubbles import account
from ..metrics.records import RunOutcome

log = logging.getLogger("pp_sarathi")

# wandb's own dirs, relative to <run dir>/wandb ("" = the run dir itself, wandb adds "wandb/").
WANDB_DIRS = {
    "WANDB_DIR": None,
    "WANDB_CACHE_DIR": ".cache",
    "WANDB_CONFIG_DIR": ".config",
    "WANDB_DATA_DIR": ".data",
    "WANDB_ARTIFACT_DIR": "artifacts",
}


@contextlib.contextmanager
def wandb_env(run_dir: Path, mode: str):
    """Point wandb's dirs (run files, cache incl. wandb-core logs, config, data, artifacts)
    inside the run dir for the duration of one run, then restore the environment. Online runs
    keep the user's WANDB_CONFIG_DIR (login settings live there)."""
    saved = {k: os.environ.get(k) for k in (*WANDB_DIRS, "WANDB_SILENT")}
    base = Path(run_dir).resolve() / "wandb"
    try:
        for key, sub in WANDB_DIRS.items():
            if key == "WANDB_CONFIG_DIR" and mode == "online":
                continue
            os.environ[key] = str(Path(run_dir).resolve()) if sub is None else str(base / sub)
        os.environ.setdefault("WANDB_SILENT", "true")
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def iteration_rows(outcome: RunOutcome) -> list[dict]:
    """One row per micro-batch (in scheduling order): batch shape, its bubble over all stages,
    and per stage compute / recv-wait / send time and the stage's idle gap right before it
    (the pieces of the stage bubble, metrics/bubbles.py)."""
    batches = sorted(outcome.batches, key=lambda b: b.batch_id)
    report = account(outcome.stage_records, [(b.scheduled_at, b.done_at) for b in batches],
                     {b.batch_id: b.scheduled_at for b in batches})
    rows: dict[int, dict] = defaultdict(dict)
    for b in batches:
        rows[b.batch_id].update({
            "iteration/batch_id": b.batch_id,
            "iteration/requests": b.num_requests,
            "iteration/prefill_tokens": b.num_prefill_tokens,
            "iteration/decode_tokens": b.num_decode_tokens,
            "iteration/tokens": b.num_prefill_tokens + b.num_decode_tokens,
            "iteration/latency_ms": (b.done_at - b.scheduled_at) * 1e3,
            "iteration/bubble_ms": report.batch_bubble_s.get(b.batch_id, 0.0) * 1e3,
        })
    for r in outcome.stage_records:
        rows[r.batch_id].update({
            f"stage{r.stage}/compute_ms": (r.compute_end - r.compute_start) * 1e3,
            f"stage{r.stage}/recv_wait_ms": (r.recv_end - r.recv_start) * 1e3,
            f"stage{r.stage}/send_ms": (r.send_end - r.send_start) * 1e3,
            f"stage{r.stage}/bubble_ms": report.stage_gap_s.get((r.stage, r.batch_id), 0.0) * 1e3,
        })
    return [rows[k] for k in sorted(rows)]


def summary_metrics(results: dict) -> dict:
    lat, bub, thr = results["latency"], results["bubble"], results["throughput"]
    out = {
        "wall_s": results.get("wall_s"),
        "throughput/tokens_per_s": thr["tokens_per_s"],
        "throughput/decode_tokens_per_s": thr["decode_tokens_per_s"],
        "throughput/requests_per_s": thr.get("requests_per_s"),
        "bubble/total_s": bub["total_s"],
        "bubble/per_request_p50_ms": bub["per_request_ms"]["p50"],
        "bubble/per_request_p99_ms": bub["per_request_ms"]["p99"],
    }
    for name in ("ttft_ms", "tbt_ms", "e2e_ms"):
        for p in ("p50", "p99"):
            out[f"latency/{name[:-3]}_{p}_ms"] = lat[name][p]
    for st in results["stages"]:
        s = st["stage"]
        for key in ("compute_s", "recv_wait_s", "send_s", "bubble_s", "bubble_fraction"):
            out[f"stage{s}/{key}"] = st[key]
    return {k: v for k, v in out.items() if v is not None}


def log_run(outcome: RunOutcome, results: dict, config: dict, run_dir: Path) -> None:
    """Log one run; a wandb failure is reported and never fails the run (its files are written)."""
    wcfg = config.get("logging", {}).get("wandb", {})
    mode = wcfg.get("mode", "offline")
    if mode == "disabled":
        return
    if mode not in ("offline", "online"):
        log.warning("logging.wandb.mode must be offline, online or disabled, not %r; not logging", mode)
        return
    run_dir = Path(run_dir)
    with wandb_env(run_dir, mode):
        try:
            _log(outcome, results, config, run_dir, wcfg, mode)
        except Exception as exc:  # noqa: BLE001 - logging must not lose a finished run
            log.warning("wandb logging failed: %s", exc)


def _reinit(version: str):
    """A new run even if one is active: ``"create_new"`` since wandb 0.19, ``True`` before."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return "create_new"
    return "create_new" if (major, minor) >= (0, 19) else True


def _log(outcome, results, config, run_dir: Path, wcfg: dict, mode: str) -> None:
    import wandb

    sched = config.get("scheduler", {}).get("name")
    name = wcfg.get("name") or sched
    run = wandb.init(project=wcfg.get("project") or "pp_sarathi", group=wcfg.get("group"), name=name,
                     job_type=config.get("command"), mode=mode, dir=str(run_dir), config=config,
                     tags=[t for t in (sched, config.get("model", {}).get("name")) if t],
                     reinit=_reinit(wandb.__version__))
    try:
        run.define_metric("iteration/*", step_metric="iteration")
        run.define_metric("stage*", step_metric="iteration")
        for step, row in enumerate(iteration_rows(outcome)):
            run.log({"iteration": step, **row}, step=step)
        if (run_dir / "timeline.png").exists():
            run.log({"timeline": wandb.Image(str(run_dir / "timeline.png"))})
        run.summary.update(summary_metrics(results))
        if (run_dir / "trace.json").exists():
            run.save(str(run_dir / "trace.json"), base_path=str(run_dir), policy="now")
    finally:
        run.finish()
        # The wandb service inherited this run's environment; stop it so the next run in
        # this process (compare with pp=1) starts one with its own dirs.
        wandb.teardown()
