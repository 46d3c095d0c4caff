"""The run's stage-time predictor, calibrated on the device the run uses.

Rank 0 holds stage 0's real layers: at start-up it times a handful of synthetic batch shapes
through its executor (a few seconds) and fits :class:`~pp_sarathi.cost.probed.ProbedCosts`.
The fit is cached per model, dtype, device and threads under the model cache dir, so only the
first run on a machine pays for it. ``sim.profile`` set: that profile CSV is used instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..cost import BatchShape, CostModel, PlanCost, ProfileCosts
from ..cost.probed import ProbedCosts, probe_shapes
from ..model.arch import ModelArch
from ..model.preset import cache_root
from ..scheduler.batch import ScheduledPart
from .executor import StageExecutor

log = logging.getLogger("pp_sarathi")

PROBE_REPEATS = 3
CACHE_VERSION = 5  # bumped when the engine's speed changes (2: in-place CPU decode attention, 3: chunks, 4: row-wise kernels, 5: one-pass decode kernel)


def _parts(prefills, decodes, block_size: int, num_blocks: int) -> list[ScheduledPart]:
    parts, nxt = [], 0
    for i, (n, start) in enumerate([(c, k) for c, k in prefills] + [(1, x - 1) for x in decodes]):
        need = -(-(start + n) // block_size)
        table = [(nxt + j) % num_blocks for j in range(need)]
        nxt += need
        parts.append(ScheduledPart(seq_index=-1 - i, start=start, token_ids=[1] * n, block_table=table,
                                   is_prefill=n > 1, sample=False, output_index=0))
    return parts


def probe(executor: StageExecutor, max_len: int, repeats: int = PROBE_REPEATS) -> list[tuple[BatchShape, int, float]]:
    """Time every probe shape through ``executor`` (stage 0): (shape, layers, median seconds)."""
    kv = executor.kv
    layers = len(executor.model.layers)
    cuda = executor.device.type == "cuda"
    rows = []
    # The fit models full layers (a first, not last, stage); at pp=1 stage 0 also holds the
    # model's last layer, which would skip work for the probe's unsampled rows.
    model = executor.model
    prune, model.prune_last_layer = model.prune_last_layer, False
    try:
        with torch.inference_mode():
            for prefills, decodes in probe_shapes(max_len):
                parts = _parts(prefills, decodes, kv.block_size, kv.num_blocks)
                times = []
                for r in range(repeats + 1):
                    t0 = time.perf_counter()
                    executor.step(parts)
                    if cuda:
                        torch.cuda.synchronize(executor.device)
                    if r:  # the first call warms up
                        times.append(time.perf_counter() - t0)
                rows.append((BatchShape.of(prefills, decodes, 0), layers, statistics.median(times)))
    finally:
        model.prune_last_layer = prune
    return rows


def cache_path(model_path: Path, dtype: str, device: str, threads: int) -> Path:
    """One file per checkpoint (its resolved path and config), dtype, device and threads."""
    path = Path(model_path).resolve()
    conf = path / "config.json"
    ident = str(path) + (conf.read_text() if conf.is_file() else "")
    digest = hashlib.sha1(ident.encode()).hexdigest()[:10]
    key = f"{path.name}-{digest}-{dtype}-{device.replace(':', '')}-t{threads}"
    return cache_root() / "calibration" / f"{key}.json"


def load_cached(cfg: RunConfig, model_path: Path, arch: ModelArch, device: str,
                threads: int | None = None) -> ProbedCosts | None:
    """The cached probe fit for this model/dtype/device/threads, or None."""
    path = cache_path(model_path, cfg.model.dtype, device, threads or torch.get_num_threads())
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != CACHE_VERSION:
        return None
    return ProbedCosts(arch, cfg.model.dtype, data["coef"], {**data.get("info", {}), "cache": str(path)})


def calibrate(cfg: RunConfig, model_path: Path, arch: ModelArch, executor: StageExecutor) -> CostModel:
    """The predictor for this run: ``sim.profile`` if set, the cached probe fit, or a new probe."""
    if cfg.sim.profile:
        return ProfileCosts.from_csv(cfg.sim.profile, arch, cfg.model.dtype, statistic=cfg.sim.profile_statistic)
    device, threads = str(executor.device), torch.get_num_threads()
    cached = load_cached(cfg, model_path, arch, device, threads)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    rows = probe(executor, arch.max_position_embeddings)
    info = {"device": device, "threads": threads, "probe_s": time.perf_counter() - t0, "probe_steps": len(rows)}
    cost = ProbedCosts.fit(arch, cfg.model.dtype, rows, info)
    path = cache_path(model_path, cfg.model.dtype, device, threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(cost)}")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, **cost.to_dict()}, indent=1))
        tmp.replace(path)
    except OSError as exc:  # a read-only cache dir only costs the next run another probe
        log.warning("could not cache the stage-time calibration at %s: %s", path, exc)
    log.info("stage-time predictor probed in %.1f s on %s (%d threads): %s; worst fit error %.0f%%",
             info["probe_s"], device, threads,
             ", ".join(f"{k}={v:.3g}" for k, v in cost.coef.items()), 100 * (cost.info["fit_error_max"] or 0))
    return cost


def run_predictor(cfg: RunConfig, model_path: Path, arch: ModelArch, executor: StageExecutor,
                  layer_ranges: list[tuple[int, int]]) -> PlanCost:
    """:func:`calibrate`'s cost model over this run's layer split."""
    cost = calibrate(cfg, model_path, arch, executor)
    return PlanCost(cost, [b - a for a, b in layer_ranges])
