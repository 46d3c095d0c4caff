"""A stage executor: runs one micro-batch's parts through the stage's layers (and samples on
the last stage)."""
from __future__ import annotations

import torch

from ..model.kv_cache import KVCache, PartSpec, build_attention_metadata
from ..model.llama import StageModel
from ..scheduler.batch import SampleResult, ScheduledPart
from .sampler import Sampler


class StageExecutor:
    def __init__(self, model: StageModel, kv: KVCache, sampler: Sampler | None):
        self.model = model
        self.kv = kv
        self.sampler = sampler
        self.device = next(model.parameters()).device
        model.prepare_kernels()  # at load time, not in the first step

    @property
    def is_first(self) -> bool:
        return self.model.is_first

    @property
    def is_last(self) -> bool:
        return self.model.is_last

    def step(self, parts: list[ScheduledPart], hidden: torch.Tensor | None = None):
        """Hidden states ``[T, h]`` for the next stage, or on the last stage the sampled tokens."""
        specs = [PartSpec(p.start, p.num_tokens, p.block_table, p.sample) for p in parts]
        meta = build_attention_metadata(specs, self.kv.block_size, self.device, self.model.arch.sliding_window)
        if self.is_first:
            ids = [t for p in parts for t in p.token_ids]
            hidden = torch.tensor(ids, dtype=torch.long, device=self.device)
        out = self.model(hidden, meta, self.kv)
        if not self.is_last:
            return out
        keys = [(p.seq_index, p.output_index) for p in parts if p.sample]
        results: list[SampleResult | None] = [None] * len(parts)
        sampled = self.sampler(out, keys) if keys else []
        for i, res in zip((i for i, p in enumerate(parts) if p.sample), sampled):
            results[i] = res
        return results
