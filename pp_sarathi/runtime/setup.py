"""From a config to a ready stage: which checkpoint, which device, which layers, how much KV."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig, RunConfig
from ..model.arch import ModelArch
from ..model.loader import load_stage, parse_dtype
from ..model.preset import materialize
from .executor import StageExecutor
from .sampler import Sampler


def resolve_model(mcfg: ModelConfig) -> tuple[Path, ModelArch]:
    """The checkpoint dir (written first for the embedded presets) and its architecture."""
    if mcfg.path:
        path = Path(mcfg.path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model.path {mcfg.path!r} does not exist or is not a directory")
    else:
        path = materialize(mcfg)
    parse_dtype(mcfg.dtype)
    return path, ModelArch.from_pretrained(path)


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

