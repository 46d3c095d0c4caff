"""Timed forward passes of hand-built batches through the real StageModel / KVCache /
build_attention_metadata path: prefill-only chunks, decode-only batches and hybrids of both."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..model.kv_cache import KVCache, PartSpec, build_attention_metadata
from ..model.llama import StageModel
from ..cost.shape import BatchShape


@dataclass
class Batch:
    """One batch ready to run: its parts, token ids and prebuilt attention metadata."""

    name: str
    parts: list[PartSpec]
    shape: BatchShape
    run: Callable[[], list[int]]  # forward + greedy pick of the sampled rows (ends in a host sync)
    build_meta: Callable[[], object]  # rebuilds the metadata (to time it apart)


class HybridBench:
    """A KV cache with a prefill slot and ``max_decodes`` decode requests whose contexts are filled.

    Decode request i has ``context_len`` cached tokens (random K/V, which is all a timing needs)
    and its new token at position ``context_len``. The prefill request is fresh: a chunk of n
    tokens at position ``start`` writes slots ``start .. start+n-1`` of its own blocks (every
    repeat overwrites the same slots, so repeats see the same state).
    """

    def __init__(self, model: StageModel, max_prefill: int, max_decodes: int, context_len: int,
                 block_size: int = 16, seed: int = 0):
        if not model.is_first or not model.is_last:
            raise ValueError("the microbenchmark runs the whole model in one process (pp=1)")
        arch = model.arch
        if max_prefill > arch.max_position_embeddings or context_len + 1 > arch.max_position_embeddings:
            raise ValueError(f"prefill {max_prefill} / context {context_len} + 1 exceed the model's "
                             f"context of {arch.max_position_embeddings}")
        self.model = model
        self.device = next(model.parameters()).device
        self.block_size = block_size
        self.context_len = context_len
        nb = lambda n: -(-n // block_size)  # noqa: E731
        self.prefill_table = list(range(nb(max_prefill)))
        per_dec = nb(context_len + 1)
        base = len(self.prefill_table)
        self.decode_tables = [list(range(base + i * per_dec, base + (i + 1) * per_dec))
                              for i in range(max_decodes)]
        num_blocks = base + max_decodes * per_dec
        self.kv: KVCache = model.new_kv_cache(num_blocks, block_size)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for pool in (self.kv.k, self.kv.v):
            pool.normal_(0.0, 1.0, generator=gen)
        self._gen = torch.Generator().manual_seed(seed + 1)

    def _ids(self, n: int) -> torch.Tensor:
        return torch.randint(3, self.model.arch.vocab_size, (n,), generator=self._gen).to(self.device)

    def batch(self, name: str, prefill: int = 0, decodes: int = 0, prefill_start: int = 0,
              decode_ctx: int | None = None) -> Batch:
        """Decodes first, then the chunk (the order the sarathi scheduler builds them in)."""
        ctx = self.context_len if decode_ctx is None else decode_ctx
        if ctx > self.context_len:
            raise ValueError(f"decode context {ctx} > filled context {self.context_len}")
        if decodes > len(self.decode_tables):
            raise ValueError(f"{decodes} decodes > {len(self.decode_tables)} prepared")
        parts = [PartSpec(ctx, 1, self.decode_tables[i], True) for i in range(decodes)]
        chunks = []
        if prefill:
            parts.append(PartSpec(prefill_start, prefill, self.prefill_table, True))
            chunks.append((prefill, prefill_start))
        if not parts:
            raise ValueError("empty batch")
        ids = self._ids(sum(p.num_tokens for p in parts))
        bs, dev, win = self.block_size, self.device, self.model.arch.sliding_window
        build = lambda: build_attention_metadata(parts, bs, dev, win)  # noqa: E731
        meta = build()
        model, kv = self.model, self.kv

        def run() -> list[int]:
            return model(ids, meta, kv).argmax(dim=-1).tolist()

        return Batch(name, parts, BatchShape.of(chunks, [ctx + 1] * decodes), run, build)
