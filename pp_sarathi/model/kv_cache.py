"""Paged KV cache of one pipeline stage, and the per-batch attention metadata built over it.

Layout: for each of the stage's layers, K and V live in one flat pool of
``num_blocks * block_size`` token slots, ``[layers, slots, kv_heads, head_dim]``.
A request owns a list of blocks (its block table, kept by the scheduler's block manager);
its token at position p lives in slot ``table[p // block_size] * block_size + p % block_size``.
Every stage has the same number of blocks, so one block table serves all stages.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention.bias import causal_lower_right


class KVCache:
    """K/V pools for layers ``[0, num_layers)`` of a stage (local layer numbering)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)


@dataclass
class PartSpec:
    """One part of a hybrid batch as the executor sees it."""

    start: int  # position of the part's first token in its request
    num_tokens: int
    block_table: list[int]
    needs_logits: bool  # last token goes through the LM head


@dataclass
class AttentionMetadata:
    """Index tensors shared by every layer of one forward pass."""

    positions: torch.Tensor  # [T] position of each flat token
    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    logits_indices: torch.Tensor  # [L] flat rows that go through the LM head
    # Parts of more than one token: (first flat row, num_tokens, start position, gather index,
    # mask: None = causal from position 0, else a bool mask or a lower-right causal bias)
    chunks: list[tuple[int, int, int, torch.Tensor, torch.Tensor | None]]
    # Single-token parts (decodes) attended together: flat rows, gather index, key mask
    decode_rows: torch.Tensor | None
    decode_gather: torch.Tensor | None  # [D, max_ctx] slots
    decode_mask: torch.Tensor | None  # [D, 1, 1, max_ctx] True where the key is visible

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())


def _slots(table: torch.Tensor, block_size: int, begin: int, end: int) -> torch.Tensor:
    pos = torch.arange(begin, end)
    return table[pos // block_size] * block_size + pos % block_size


def build_attention_metadata(parts: list[PartSpec], block_size: int, device,
                             sliding_window: int | None = None) -> AttentionMetadata:
    """Turn a batch's parts into the index tensors the attention layers use."""
    positions: list[torch.Tensor] = []
    slot_mapping: list[torch.Tensor] = []
    logits_rows: list[int] = []
    chunks = []
    dec_rows, dec_slots, dec_lens = [], [], []
    row = 0
    for part in parts:
        end = part.start + part.num_tokens
        if len(part.block_table) * block_size < end:
            raise ValueError(f"block table of {len(part.block_table)} blocks cannot hold {end} tokens")
        table = torch.as_tensor(part.block_table, dtype=torch.long)
        ctx_slots = _slots(table, block_size, 0, end)
        positions.append(torch.arange(part.start, end))
        slot_mapping.append(ctx_slots[part.start:])
        if part.num_tokens == 1:
            dec_rows.append(row)
            dec_slots.append(ctx_slots)
            dec_lens.append(end)
        else:
            mask = None  # None: plain causal (the chunk starts the sequence)
            if sliding_window:
                q_pos = torch.arange(part.start, end, device=device)[:, None]
                k_pos = torch.arange(end, device=device)[None, :]
                mask = (k_pos <= q_pos) & (k_pos > q_pos - sliding_window)
            elif part.start > 0:
                # Causal aligned to the end of the keys; SDPA keeps its fused kernels for this.
                mask = causal_lower_right(part.num_tokens, end)
            chunks.append((row, part.num_tokens, part.start, ctx_slots.to(device), mask))
        if part.needs_logits:
            logits_rows.append(row + part.num_tokens - 1)
        row += part.num_tokens

    decode_rows = decode_gather = decode_mask = None
    if dec_rows:
        width = max(dec_lens)
        gather = torch.zeros(len(dec_rows), width, dtype=torch.long)
        mask = torch.zeros(len(dec_rows), width, dtype=torch.bool)
        for i, (slots, n) in enumerate(zip(dec_slots, dec_lens)):
            gather[i, :n] = slots
            lo = max(0, n - sliding_window) if sliding_window else 0
            mask[i, lo:n] = True
        decode_rows = torch.tensor(dec_rows, dtype=torch.long, device=device)
        decode_gather = gather.to(device)
        decode_mask = mask[:, None, None, :].to(device)
    return AttentionMetadata(
        positions=torch.cat(positions).to(device),
        slot_mapping=torch.cat(slot_mapping).to(device),
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        chunks=chunks,
        decode_rows=decode_rows,
        decode_gather=decode_gather,
        decode_mask=decode_mask,
    )
