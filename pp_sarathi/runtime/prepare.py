"""Everything checked and resolved before any stage starts: config, model, workload."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..model.arch import ModelArch
from ..scheduler import BlockManager, Scheduler, make_scheduler
from ..workload import Request, load_workload
from .partition import layer_counts, layer_ranges
from .sampler import Sampler
from .stage import num_kv_blocks, resolve_model


@dataclass
class Prepared:
    """A run ready to start: validated config, checkpoint, architecture, requests, layer split."""

    cfg: RunConfig
    model_path: Path
    arch: ModelArch
    requests: list[Request]
    layer_ranges: list[tuple[int, int]]


def check_devices(cfg: RunConfig) -> None:
    """Refuse device/backend combinations that would only fail once ranks start."""
    import torch

    pp, backend = cfg.parallel.pp, cfg.parallel.backend
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus > 0)
    if backend == "nccl" and gpus < pp:
        raise ValueError(f"parallel.backend=nccl needs {pp} GPUs (one per stage), found {gpus}")
    if pp > 1 and wants_cuda and backend == "auto" and gpus < pp:
        raise ValueError(f"parallel.pp={pp} on CUDA needs one GPU per stage, found {gpus}; "
                         f"use fewer stages, or device=cpu parallel.backend=gloo")
    if pp > 1 and wants_cuda and backend == "gloo":
        raise ValueError("parallel.backend=gloo moves activations through host memory; on CUDA use "
                         "parallel.backend=nccl (one GPU per stage), or device=cpu")


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the config, write/locate the model, read the workload: fail here, early."""
    if cfg.scheduler.chunk_size < 1:
        raise ValueError(f"scheduler.chunk_size must be >= 1, got {cfg.scheduler.chunk_size}")
    if cfg.parallel.backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"parallel.backend must be auto, gloo or nccl, not {cfg.parallel.backend!r}")
    Sampler(cfg.sampling)  # validates sampling settings
    check_devices(cfg)
    path, arch = resolve_model(cfg.model)
    ranges = layer_ranges(layer_counts(arch, cfg.parallel.pp, cfg.parallel.partition))
    requests = load_workload(cfg.workload, arch.vocab_size, arch.eos_token_ids)
    return Prepared(cfg, path, arch, requests, ranges)


def new_scheduler(prep: Prepared, predictor=None) -> Scheduler:
    """The run's scheduler with its requests; ``predictor``: a
    :class:`~pp_sarathi.cost.plan.PlanCost` (sarathi_uniform plans with it, every policy
    records its plans' predicted stage times)."""
    cfg = prep.cfg
    blocks = BlockManager(num_kv_blocks(cfg, prep.arch), cfg.cache.block_size)
    sched = make_scheduler(cfg.scheduler, blocks, prep.arch.max_position_embeddings, cfg.parallel.pp,
                           prep.arch.eos_token_ids, cfg.sampling.ignore_eos, predictor)
    sched.add_requests(prep.requests, prep.arch.vocab_size)
    return sched
