"""Everything checked and resolved before any stage starts: config, model, workload."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..cost import ProfileCosts, RooflineCosts
from ..model.arch import ModelArch
from ..model.source import resolve_checkpoint
from ..model.text_output import TextOutput
from ..model.text_support import TextSupport
from ..model.tokenizer import Tokenizer
from ..scheduler import BlockManager, Scheduler, make_scheduler
from ..workload import Request, load_workload
from .calibrate import load_cached
from .cores import plan_cores, stage_threads
from .partition import layer_counts, layer_ranges, predicted_stage_seconds, reference_shape
from .sampler import Sampler
from .stage import num_kv_blocks

log = logging.getLogger("pp_sarathi")


@dataclass
class Prepared:
    """A run ready to start: validated config, checkpoint, architecture, requests, layer split."""

    cfg: RunConfig
    model_path: Path
    arch: ModelArch
    requests: list[Request]
    layer_ranges: list[tuple[int, int]]
    tokenizer: Tokenizer | None = None  # the checkpoint's, when it has one (text outputs, stops)


def check_devices(cfg: RunConfig) -> None:
    """Refuse device/backend combinations that would only fail once ranks start."""
    import torch

    pp, backend = cfg.parallel.pp, cfg.parallel.backend
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and gpus > 0)
    if pp > 1 and cfg.parallel.transport == "shm" and (backend == "nccl" or (backend == "auto" and wants_cuda)):
        raise ValueError("parallel.transport=shm is a gloo path (stages on one CPU host); with NCCL "
                         "between GPUs use parallel.transport=auto or gloo")
    if backend == "nccl" and gpus < pp:
        raise ValueError(f"parallel.backend=nccl needs {pp} GPUs (one per stage), found {gpus}")
    if pp > 1 and wants_cuda and backend == "auto" and gpus < pp:
        raise ValueError(f"parallel.pp={pp} on CUDA needs one GPU per stage, found {gpus}; "
                         f"use fewer stages, or device=cpu parallel.backend=gloo")
    if pp > 1 and wants_cuda and backend == "gloo":
        raise ValueError("parallel.backend=gloo moves activations through host memory; on CUDA use "
                         "parallel.backend=nccl (one GPU per stage), or device=cpu")


def local_stages(cfg: RunConfig) -> int:
    """Stages on this host: every stage, unless a launcher (torchrun, deepspeed) says otherwise."""
    if "RANK" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return cfg.parallel.pp


def check_host(cfg: RunConfig) -> None:
    """Refuse ``parallel.bind_cores=on`` when this host's stages do not fit on distinct cores."""
    import torch

    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    plan_cores(cfg.parallel, local_stages(cfg), "cuda" if cuda else "cpu")


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the config, write/locate the model, read the workload: fail here, early."""
    cfg.check()  # the config's own rules (config.py), again: fields may have been set since
    Sampler(cfg.sampling)  # validates sampling settings
    check_devices(cfg)
    check_host(cfg)
    src = resolve_checkpoint(cfg.model)
    path, arch = src.path, src.arch
    ranges = layer_ranges(split_layers(cfg, path, arch))
    text = TextSupport(path, src.embedded)
    if cfg.sampling.stop:
        text.require("sampling.stop")
    requests = load_workload(cfg.workload, arch.vocab_size, arch.eos_token_ids, text.encode,
                             arch.max_position_embeddings)
    return Prepared(cfg, path, arch, requests, ranges, text.tokenizer)


def split_layers(cfg: RunConfig, path: Path, arch: ModelArch) -> list[int]:
    """``parallel.partition``'s layer counts; ``balanced`` from the stage-time predictor this
    machine has (a cached calibration of this model, else the ``hardware`` roofline), its
    predicted time per stage logged."""
    pp, partition = cfg.parallel.pp, cfg.parallel.partition
    if partition != "balanced":
        return layer_counts(arch, pp, partition)
    cost = None
    if cfg.sim.profile:
        cost = ProfileCosts.from_csv(cfg.sim.profile, arch, cfg.model.dtype, statistic=cfg.sim.profile_statistic)
    elif not cfg.device.startswith("cuda"):
        cost = load_cached(cfg, path, arch, "cpu", stage_threads(pp, cfg.parallel.threads_per_stage))
    cost = cost or RooflineCosts(arch, cfg.model.dtype, cfg.hardware)
    ref = reference_shape(cfg.scheduler, pp, arch.max_position_embeddings)
    counts = layer_counts(arch, pp, partition, cost, ref)
    times = predicted_stage_seconds(arch, counts, cost, ref)
    log.info("balanced partition %s (from the %s predictor): predicted ms per stage for a %d-token "
             "micro-batch: %s", counts, cost.source, ref.num_tokens, ", ".join(f"{1e3 * t:.1f}" for t in times))
    return counts


def new_scheduler(prep: Prepared, predictor=None) -> Scheduler:
    """The run's scheduler with its requests; ``predictor``: a
    :class:`~pp_sarathi.cost.plan.PlanCost` (sarathi_uniform plans with it, every policy
    records its plans' predicted stage times)."""
    cfg = prep.cfg
    blocks = BlockManager(num_kv_blocks(cfg, prep.arch), cfg.cache.block_size)
    sched = make_scheduler(cfg.scheduler, blocks, prep.arch.max_position_embeddings, cfg.parallel.pp,
                           prep.arch.eos_token_ids, cfg.sampling.ignore_eos, predictor)
    if prep.tokenizer is not None:
        sched.text = TextOutput(prep.tokenizer, cfg.sampling.stop)
    sched.add_requests(prep.requests, prep.arch.vocab_size)
    return sched
