"""Paged KV cache of one pipeline stage, and the per-batch attention metadata built over it.

Layout: for each of the stage's layers, K and V live in one flat pool of
``num_blocks * block_size`` token slots, ``[layers, slots, kv_heads, head_dim]``.
A request owns a list of blocks (its block table, kept by the scheduler's block manager);
its token at position p lives in slot ``table[p // block_size] * block_size + p % block_size``.
Every stage has the same number of blocks, so one block table serves all stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    """Index tensors shared by every layer of one forward pass.

    Attention reads the cache a whole block at a time: a part's keys are the blocks of its
    block table that cover its context, gathered in one ``index_select`` over the pool viewed
    as ``[num_blocks, block_size, ...]`` (a few large copies instead of one small copy per
    token), and the tail of the last block beyond the context is masked or sliced off.
    """

    positions: torch.Tensor  # [T] position of each flat token
    slot_mapping: torch.Tensor  # [T] cache slot each new token's K/V is written to
    logits_indices: torch.Tensor  # [L] flat rows that go through the LM head
    # Parts of more than one token: (first flat row, num_tokens, start position, blocks that
    # hold keys 0 .. start + num_tokens - 1, mask). On the torch path a chunk that starts its
    # sequence attends only to its own K/V, which the layer has at hand (its blocks are None
    # off the CPU). mask: None = causal over the chunk's own keys, else a bool mask (CPU,
    # sliding window) or a lower-right causal bias over the ``start + num_tokens`` keys.
    chunks: list[tuple[int, int, int, torch.Tensor | None, torch.Tensor | None]]
    # Single-token parts (decodes) attended together: flat rows, blocks, key mask
    decode_rows: torch.Tensor | None
    decode_blocks: torch.Tensor | None  # [D, max_blocks] block ids (padding: block 0, masked)
    decode_mask: torch.Tensor | None  # [D, 1, 1, max_blocks * block_size] True where the key is visible
    block_size: int = 16
    # [D] keys per decode, for the in-place CPU kernel (model/cpu_attention.py); None where the
    # mask is more than a length (a sliding window)
    decode_lens: torch.Tensor | None = None
    # Each sampled row's (block table, keys): what the model's last layer needs to attend from
    # those rows alone (:meth:`sampled_rows`)
    sampled_parts: list[tuple[list[int], int]] = field(default_factory=list)
    sliding_window: int | None = None
    _sampled: "AttentionMetadata | None" = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())

    def sampled_rows(self) -> "AttentionMetadata":
        """The rows in :attr:`logits_indices` alone, each attending as a decode does (its keys
        are all cached by then): the model's last layer needs nothing else (built once)."""
        if self._sampled is None:
            device = self.positions.device
            tables = [t for t, _ in self.sampled_parts]
            lens = [n for _, n in self.sampled_parts]
            blocks, mask, lens_t = _decode_tensors(tables, lens, self.block_size, self.sliding_window, device)
            rows = torch.arange(len(lens), dtype=torch.long, device=device)
            self._sampled = AttentionMetadata(
                positions=self.positions[self.logits_indices], slot_mapping=self.slot_mapping[self.logits_indices],
                logits_indices=rows, chunks=[], decode_rows=rows if lens else None,
                decode_blocks=blocks, decode_mask=mask, block_size=self.block_size, decode_lens=lens_t,
                sliding_window=self.sliding_window)
        return self._sampled


def _decode_tensors(tables: list[list[int]], lens: list[int], block_size: int, sliding_window: int | None,
                    device) -> tuple:
    """Single-token queries' padded block tables ``[D, W]``, key mask ``[D, 1, 1, W * bs]`` and
    key counts ``[D]`` (None with a sliding window); all None without queries."""
    if not tables:
        return None, None, None
    width = max(len(t) for t in tables)
    blocks = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
    key_pos = torch.arange(width * block_size)
    lens_t = torch.tensor(lens)[:, None]
    mask = key_pos[None, :] < lens_t
    if sliding_window:
        mask &= key_pos[None, :] >= lens_t - sliding_window
    return (blocks.to(device), mask[:, None, None, :].to(device),
            None if sliding_window else lens_t.view(-1).to(device))


def build_attention_metadata(parts: list[PartSpec], block_size: int, device,
                             sliding_window: int | None = None) -> AttentionMetadata:
    """Turn a batch's parts into the index tensors the attention layers use.

    Host work is plain Python over the parts; each tensor is made once and moved once."""
    positions: list[int] = []
    slot_mapping: list[int] = []
    logits_rows: list[int] = []
    chunks = []
    dec_rows: list[int] = []
    dec_tables: list[list[int]] = []
    dec_lens: list[int] = []
    sampled: list[tuple[list[int], int]] = []
    row = 0
    for part in parts:
        begin, end = part.start, part.start + part.num_tokens
        table = part.block_table
        if len(table) * block_size < end:
            raise ValueError(f"block table of {len(table)} blocks cannot hold {end} tokens")
        positions.extend(range(begin, end))
        slot_mapping.extend(table[p // block_size] * block_size + p % block_size for p in range(begin, end))
        used = -(-end // block_size)
        if part.num_tokens == 1:
            dec_rows.append(row)
            dec_tables.append(table[:used])
            dec_lens.append(end)
        else:
            mask = None  # None: plain causal over the chunk's own keys (it starts the sequence)
            if sliding_window:
                q_pos = torch.arange(begin, end, device=device)[:, None]
                k_pos = torch.arange(end, device=device)[None, :]
                mask = (k_pos <= q_pos) & (k_pos > q_pos - sliding_window)
            elif begin > 0 and torch.device(device).type == "cpu":
                # Causal aligned to the end of the keys, built once for every layer: on the CPU
                # SDPA would materialise a lower-right bias again in each layer.
                q_pos = torch.arange(begin, end)[:, None]
                mask = torch.arange(end)[None, :] <= q_pos
            elif begin > 0:
                # Causal aligned to the end of the keys; SDPA keeps its fused kernels for this.
                mask = causal_lower_right(part.num_tokens, end)
            # A first chunk needs its blocks only for the in-place CPU kernel.
            blocks = torch.tensor(table[:used], dtype=torch.long, device=device) \
                if begin > 0 or torch.device(device).type == "cpu" else None
            chunks.append((row, part.num_tokens, begin, blocks, mask))
        if part.needs_logits:
            logits_rows.append(row + part.num_tokens - 1)
            sampled.append((table[:used], end))
        row += part.num_tokens

    decode_blocks, decode_mask, decode_lens = _decode_tensors(dec_tables, dec_lens, block_size, sliding_window, device)
    decode_rows = torch.tensor(dec_rows, dtype=torch.long, device=device) if dec_rows else None
    return AttentionMetadata(
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        chunks=chunks,
        decode_rows=decode_rows,
        decode_blocks=decode_blocks,
        decode_mask=decode_mask,
        block_size=block_size,
        decode_lens=decode_lens,
        sampled_parts=sampled,
        sliding_window=sliding_window,
    )
