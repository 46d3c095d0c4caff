"""Everything checked and resolved before any stage starts: config, model, workload."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..model.arch import ModelArch
from ..model.source import resolve_checkpoint
from ..model.text_output import TextOutput
from ..model.text_support import TextSupport
from ..model.tokenizer import Tokenizer
from ..scheduler import BlockManager, Scheduler, make_scheduler
from ..workload import Request, load_workload
from .partition import layer_counts, layer_ranges
from .sampler import Sampler
from .stage import num_kv_blocks


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
    cfg.check()  # the config's own rules (config.py), again: fields may have been set since
    Sampler(cfg.sampling)  # validates sampling settings
    check_devices(cfg)
    src = resolve_checkpoint(cfg.model)
    path, arch = src.path, src.arch
    ranges = layer_ranges(layer_counts(arch, cfg.parallel.pp, cfg.parallel.partition))
    text = TextSupport(path, src.embedded)
    if cfg.sampling.stop:
        text.require("sampling.stop")
    requests = load_workload(cfg.workload, arch.vocab_size, arch.eos_token_ids, text.encode)
    return Prepared(cfg, path, arch, requests, ranges, text.tokenizer)


def new_scheduler(prep: Prepared) -> Scheduler:
    cfg = prep.cfg
    blocks = BlockManager(num_kv_blocks(cfg, prep.arch), cfg.cache.block_size)
    sched = make_scheduler(cfg.scheduler, blocks, prep.arch.max_position_embeddings, cfg.parallel.pp,
                           prep.arch.eos_token_ids, cfg.sampling.ignore_eos)
    if prep.tokenizer is not None:
        sched.text = TextOutput(prep.tokenizer, cfg.sampling.stop)
    sched.add_requests(prep.requests, prep.arch.vocab_size)
    return sched
