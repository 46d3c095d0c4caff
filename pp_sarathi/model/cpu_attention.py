"""Attention on the CPU that reads the paged KV cache in place: decodes and prefill chunks.

The torch path (model/llama.py) gathers every part's K/V blocks into a contiguous copy and then
runs SDPA over it: twice the memory traffic of the attention itself, SDPA's CPU kernel treats
each of the grouped query heads separately, and its chunk kernel multiplies through MKL, which
takes its AVX2 path on AMD CPUs. ``csrc/paged_decode.c`` reads each decode's K and V rows once
where they lie, for all the query heads that share them, with the softmax in between;
``csrc/paged_chunk.c`` is a flash-attention loop for chunks whose multiplies broadcast
straight from the cache rows. docs/benchmarks.md (issue 16) has the measurements.

The kernels are compiled on first use (``cpu_kernels``). For anything they do not cover
(another device or dtype, a sliding window, a head size not a multiple of 16), or without a C
compiler, callers keep the torch path.
"""
from __future__ import annotations

import torch

from .cpu_kernels import library

LANES = 16  # the kernels work in 16-float strips (AVX-512; AVX2 builds use 8, which divides it)
ENABLED = True  # module-wide switch (``cpu_attention.ENABLED = False``), e.g. for an A/B run


def applies(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether the kernels cover this call (and could be built on this machine)."""
    return (ENABLED and q.device.type == "cpu" and q.dtype == torch.float32
            and k_pool.dtype == torch.float32 and q.shape[-1] % LANES == 0 and k_pool.is_contiguous()
            and library() is not None)


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Attention of ``D`` single-token queries ``q [D, H, d]`` over their cached keys.

    ``k_pool``/``v_pool`` ``[slots, Hkv, d]``; ``block_tables [D, W]`` (int64, padded rows
    allowed); ``lens [D]`` (int64) keys per query. Call only where :func:`applies` holds.
    Returns ``[D, H, d]``.
    """
    q = q.contiguous()
    D, H, d = q.shape
    W = block_tables.shape[1]
    width = -(-W * block_size // LANES) * LANES  # keys are scored LANES at a time
    tables, lens = block_tables.contiguous(), lens.contiguous()
    scratch = q.new_empty(D, H, width)
    out = q.new_empty(D, H, d)
    library().paged_decode_attention(
        q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), tables.data_ptr(), lens.data_ptr(),
        scratch.data_ptr(), out.data_ptr(), W, H, k_pool.shape[1], d, D, block_size, width, d ** -0.5,
        torch.get_num_threads())
    return out


def paged_chunk_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, table: torch.Tensor,
                          start: int, out: torch.Tensor, block_size: int) -> None:
    """Causal attention of a chunk's queries ``q [n, H, d]`` (positions ``start .. start+n-1``,
    rows may be strided, each row's heads contiguous) over keys ``0 .. start+n-1`` of the
    sequence whose block ids are ``table`` (int64, contiguous); the chunk's own K/V must
    already be in the pools. Writes ``out [n, H, d]`` (same row rules as ``q``). Call only
    where :func:`applies` holds."""
    n, H, d = q.shape
    if q.stride(2) != 1 or q.stride(1) != d or out.stride(2) != 1 or out.stride(1) != d:
        raise ValueError("q and out need each row's heads contiguous")
    library().paged_chunk_attention(
        q.data_ptr(), q.stride(0), k_pool.data_ptr(), v_pool.data_ptr(), table.data_ptr(), block_size, start, n,
        out.data_ptr(), out.stride(0), H, k_pool.shape[1], d, d ** -0.5, torch.get_num_threads())
