"""The attention paths that read K/V differently give the same result: a first chunk from its own
fresh K/V or from the cache, later chunks and decodes from whole gathered blocks."""
from __future__ import annotations

import torch

from pp_sarathi.model.arch import ModelArch
from pp_sarathi.model.kv_cache import KVCache, PartSpec, build_attention_metadata
from pp_sarathi.model.llama import DecoderLayer

ARCH = ModelArch(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
                 num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-6,
                 rope_theta=10000.0)


def _reference(q, keys, values, q_pos):
    """Plain causal attention of queries at positions q_pos over keys 0..len-1 (GQA expanded)."""
    rep = ARCH.num_heads // ARCH.num_kv_heads
    k, v = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / ARCH.head_dim ** 0.5
    visible = torch.arange(keys.shape[0])[None, :] <= torch.tensor(q_pos)[:, None]
    scores = scores.masked_fill(~visible[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def test_block_reads_match_reference():
    torch.manual_seed(0)
    bs = 4
    layer = DecoderLayer(ARCH)
    kv = KVCache(1, 64, bs, ARCH.num_kv_heads, ARCH.head_dim, torch.float32)
    # Scattered, non-contiguous block tables; a first chunk, a later chunk, two decodes.
    parts = [PartSpec(0, 6, [9, 3], True), PartSpec(5, 7, [20, 7, 31], True),
             PartSpec(10, 1, [40, 12, 2], True), PartSpec(3, 1, [50], True)]
    meta = build_attention_metadata(parts, bs, "cpu")
    seqs = {}  # the full K/V each request sees, by position
    for i, p in enumerate(parts):
        end = p.start + p.num_tokens
        seqs[i] = (torch.randn(end, ARCH.num_kv_heads, ARCH.head_dim), torch.randn(end, ARCH.num_kv_heads, ARCH.head_dim))
        for pos in range(end):
            slot = p.block_table[pos // bs] * bs + pos % bs
            kv.k[0, slot], kv.v[0, slot] = seqs[i][0][pos], seqs[i][1][pos]
    t = meta.num_tokens
    q = torch.randn(t, ARCH.num_heads, ARCH.head_dim)
    new_k = torch.cat([seqs[i][0][p.start:] for i, p in enumerate(parts)])
    new_v = torch.cat([seqs[i][1][p.start:] for i, p in enumerate(parts)])
    with torch.inference_mode():
        from_cache = layer._attention(q, meta, kv.k[0], kv.v[0])
        fresh = layer._attention(q, meta, kv.k[0], kv.v[0], new_k, new_v)
    torch.testing.assert_close(fresh, from_cache)
    row = 0
    for i, p in enumerate(parts):
        rows = slice(row, row + p.num_tokens)
        ref = _reference(q[rows], *seqs[i], list(range(p.start, p.start + p.num_tokens)))
        torch.testing.assert_close(fresh[rows], ref, rtol=1e-5, atol=1e-5)
        row += p.num_tokens
