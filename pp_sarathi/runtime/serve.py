"""Serve a workload on this process (pp=1) or as rank 0 of a pipeline."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from ..metrics.timing import StageClock
from ..model.arch import ModelArch
from ..model.source import resolve_checkpoint
from ..model.text_output import TextOutput
from ..model.text_support import TextSupport
from ..model.tokenizer import Tokenizer
from ..scheduler import BlockManager, Scheduler, make_scheduler
from ..workload import Request, load_workload
from .driver import drive
from .local import LocalPipeline
from ..metrics.records import RunOutcome
from .partition import layer_counts, layer_ranges
from .sampler import Sampler
from .pipeline_threads import prepare_host
from .setup import build_executor, num_kv_blocks, pick_device


@dataclass
class Prepared:
    """Everything checked and resolved before any stage starts."""

    cfg: RunConfig
    model_path: Path
    arch: ModelArch
    requests: list[Request]
    layer_ranges: list[tuple[int, int]]
    tokenizer: Tokenizer | None = None  # the checkpoint's, when it has one (text outputs, stops)


def prepare(cfg: RunConfig) -> Prepared:
    """Validate the config, write/locate the model, read the workload: fail here, early."""
    if cfg.scheduler.chunk_size < 1:
        raise ValueError(f"scheduler.chunk_size must be >= 1, got {cfg.scheduler.chunk_size}")
    if cfg.parallel.backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"parallel.backend must be auto, gloo or nccl, not {cfg.parallel.backend!r}")
    Sampler(cfg.sampling)  # validates sampling settings
    if cfg.parallel.backend == "nccl":
        import torch
        if torch.cuda.device_count() < cfg.parallel.pp:
            raise ValueError(f"parallel.backend=nccl needs {cfg.parallel.pp} GPUs (one per stage), "
                             f"found {torch.cuda.device_count()}")
    src = resolve_checkpoint(cfg.model)
    path, arch = src.path, src.arch
    ranges = layer_ranges(layer_counts(arch, cfg.parallel.pp, cfg.parallel.partition))
    text = TextSupport(path, src.embedded)
    if cfg.sampling.stop:
        TextOutput(text.require("sampling.stop"), cfg.sampling.stop)  # validates the strings
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


def serve_local(prep: Prepared, on_finished=None) -> RunOutcome:
    """pp=1: the whole model in this process."""
    cfg = prep.cfg
    device = pick_device(cfg)
    prepare_host(1, cfg.parallel)
    executor = build_executor(cfg, prep.model_path, prep.arch, (0, prep.arch.num_layers), device)
    scheduler = new_scheduler(prep)
    clock = StageClock(device)
    pipeline = LocalPipeline(executor, clock)
    t0 = time.perf_counter()
    batches = drive(scheduler, pipeline, clock, on_finished)
    wall = time.perf_counter() - t0
    seqs = [scheduler.seqs[r.index] for r in prep.requests]
    return RunOutcome(seqs, batches, pipeline.finish(), 1, wall, prep.layer_ranges, str(device))
