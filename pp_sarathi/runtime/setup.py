"""From a config to a ready stage: which checkpoint, which device, which layers, how much KV."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig, RunConfig
from ..model.arch import ModelArch
from ..model.loader import load_stage
from ..model.source import resolve_checkpoint
from .executor import StageExecutor
from .sampler import Sampler


def resolve_model(mcfg: ModelConfig) -> tuple[Path, ModelArch]:
    """The checkpoint (dir or .gguf; written first for the embedded presets) and its architecture."""
    src = resolve_checkpoint(mcfg)
    return src.path, src.arch


def pick_device(cfg: RunConfig, local_rank: int = 0) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available")
    return torch.device(cfg.device)


def num_kv_blocks(cfg: RunConfig, arch: ModelArch) -> int:
    if cfg.cache.num_blocks > 0:
        return cfg.cache.num_blocks
    per_request = -(-arch.max_position_embeddings // cfg.cache.block_size)
    return cfg.scheduler.max_batch_size * per_request


def build_executor(cfg: RunConfig, path: Path, arch: ModelArch, layer_range: tuple[int, int],
                   device: torch.device) -> StageExecutor:
    model = load_stage(path, *layer_range, dtype=cfg.model.dtype, device=device, arch=arch)
    kv = model.new_kv_cache(num_kv_blocks(cfg, arch), cfg.cache.block_size)
    sampler = Sampler(cfg.sampling) if model.is_last else None
    return StageExecutor(model, kv, sampler)

