"""One pipeline stage: from a config to a ready executor (checkpoint, device, layers, KV), and
the receive-compute-send loop of every stage after the first."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig, RunConfig
from ..model.arch import ModelArch
from ..model.loader import load_stage
from ..metrics.timing import StageTimeline
from ..model.source import resolve_checkpoint
from .executor import StageExecutor
from .sampler import Sampler
from .transport import HEARTBEAT, STOP, StageLink


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



def serve_stage(executor: StageExecutor, link: StageLink, timeline: StageTimeline) -> None:
    """A stage other than the first: receive, compute, pass on until told to stop.

    Heartbeats are passed on untimed; the last stage drops them."""
    clock = timeline.clock
    while True:
        r0 = clock.stamp()
        plan_id, parts, hidden = link.recv_activations()
        if plan_id in (STOP, HEARTBEAT):
            if link.next is not None:
                link.send_stop() if plan_id == STOP else link.send_heartbeat()
            if plan_id == STOP:
                break
            continue
        r1 = clock.stamp()
        out = executor.step(parts, hidden)
        c1 = clock.stamp()
        if link.next is None:
            link.send_results(plan_id, out)
        else:
            link.send_activations(plan_id, parts, out)
        timeline.add(plan_id, r0, r1, r1, c1, c1, clock.stamp())
    link.flush()
