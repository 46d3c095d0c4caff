"""The compiled CPU attention kernels (decodes and prefill chunks) read the paged cache in place
and give what plain attention over each sequence's keys gives; where they do not apply, the torch
path runs."""
from __future__ import annotations

import shutil

import pytest
import torch

from pp_sarathi.model import cpu_attention, cpu_elementwise, cpu_kernels
from pp_sarathi.model.arch import ModelArch
from pp_sarathi.model.kv_cache import KVCache, PartSpec, build_attention_metadata
from pp_sarathi.model.llama import DecoderLayer

needs_kernel = pytest.mark.skipif(cpu_kernels.library() is None,
                                  reason="no C compiler here: the kernel cannot be built")


def _arch(num_heads: int, num_kv_heads: int, head_dim: int) -> ModelArch:
    hidden = num_heads * head_dim
    return ModelArch(family="llama", vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden,
                     num_layers=1, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                     max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0)


def _reference(q, keys, values):
    """One query per sequence over all its keys, GQA expanded, in einsum (not our code)."""
    rep = q.shape[0] // keys.shape[1]
    k, v = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
    scores = torch.einsum("hd,khd->hk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("hk,khd->hd", scores.softmax(-1), v.double()).float()


def _filled_pool(lens, bs, kv_heads, head_dim, num_blocks=512, seed=0):
    """A pool with each sequence's K/V written to scattered blocks; returns pool, tables, seqs."""
    gen = torch.Generator().manual_seed(seed)
    kv = KVCache(1, num_blocks, bs, kv_heads, head_dim, torch.float32)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables, seqs = [], []
    for n in lens:
        table = [free.pop() for _ in range(-(-n // bs))]
        k = torch.randn(n, kv_heads, head_dim, generator=gen)
        v = torch.randn(n, kv_heads, head_dim, generator=gen)
        for pos in range(n):
            slot = table[pos // bs] * bs + pos % bs
            kv.k[0, slot], kv.v[0, slot] = k[pos], v[pos]
        tables.append(table)
        seqs.append((k, v))
    return kv, tables, seqs


def _kernel_and_torch_path(layer, kernel: str, q, meta, kv, *new_kv):
    """The layer's attention with the kernels on (counting the rows each call of ``kernel``
    gets) and off: (rows per call, kernel output, torch output)."""
    calls = []
    real = getattr(cpu_attention, kernel)

    def counting(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    with torch.inference_mode():
        setattr(cpu_attention, kernel, counting)
        try:
            fast = layer._attention(q, meta, kv.k[0], kv.v[0], *new_kv)
        finally:
            setattr(cpu_attention, kernel, real)
        cpu_attention.ENABLED = False
        try:
            slow = layer._attention(q, meta, kv.k[0], kv.v[0], *new_kv)
        finally:
            cpu_attention.ENABLED = True
    return calls, fast, slow


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(16, 4, 64), (8, 8, 32), (4, 1, 128), (9, 3, 64)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bs", [16, 5])  # 5: the kernel's score rows are wider than the tables
def test_kernel_matches_plain_attention(heads, kv_heads, head_dim, threads, bs):
    lens = [1, 15, 16, 17, 200, 513, 64]  # block edges, a one-key sequence, ragged widths
    kv, tables, seqs = _filled_pool(lens, bs, kv_heads, head_dim)
    width = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    q = torch.randn(len(lens), heads, head_dim)
    assert cpu_attention.applies(q, kv.k[0])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu_attention.paged_decode_attention(q, kv.k[0], kv.v[0], padded, torch.tensor(lens), bs)
    finally:
        torch.set_num_threads(before)
    for i, (k, v) in enumerate(seqs):
        torch.testing.assert_close(out[i], _reference(q[i], k, v), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_layer_decodes_take_the_kernel_and_agree_with_the_torch_path():
    arch = _arch(8, 2, 64)
    layer = DecoderLayer(arch)
    bs = 16
    lens = [40, 300, 1, 97]
    kv, tables, _ = _filled_pool(lens, bs, arch.num_kv_heads, arch.head_dim)
    # A chunk after cached tokens next to the decodes.
    parts = [PartSpec(n - 1, 1, t, True) for n, t in zip(lens, tables)]
    parts.insert(1, PartSpec(32, 8, tables[0], True))
    meta = build_attention_metadata(parts, bs, "cpu")
    assert meta.decode_lens is not None
    q = torch.randn(meta.num_tokens, arch.num_heads, arch.head_dim)
    calls, fast, slow = _kernel_and_torch_path(layer, "paged_decode_attention", q, meta, kv)
    assert calls == [len(lens)]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_kernel_declines_what_it_does_not_cover():
    pool = torch.zeros(64, 2, 64)
    assert not cpu_attention.applies(torch.zeros(3, 4, 64, dtype=torch.bfloat16), pool.bfloat16())
    assert not cpu_attention.applies(torch.zeros(3, 4, 8), torch.zeros(64, 2, 8))  # head size 8
    # A sliding window needs more than a length per decode: the metadata leaves the kernel out.
    meta = build_attention_metadata([PartSpec(9, 1, [0], True)], 16, "cpu", sliding_window=4)
    assert meta.decode_lens is None


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler here")
def test_the_kernels_build_where_a_compiler_is_found():
    """A kernel that fails to compile would otherwise only skip the tests above."""
    assert cpu_kernels.library() is not None


def test_without_a_working_compiler_attention_takes_the_torch_path(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("PP_SARATHI_CACHE", str(tmp_path))  # nothing cached to fall back on
    cpu_kernels.library.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="pp_sarathi"):
            assert cpu_kernels.library() is None
        assert "could not build the CPU kernels" in caplog.text
        q, pool = torch.zeros(2, 4, 16), torch.zeros(64, 2, 16)
        assert not cpu_attention.applies(q, pool)
        assert not cpu_elementwise.applies(q)  # the row-wise ops keep torch too
    finally:
        cpu_kernels.library.cache_clear()


def _causal_reference(q, keys, values, start):
    """Queries at positions start.. over keys 0..own position, GQA expanded, in einsum."""
    n, heads = q.shape[0], q.shape[1]
    rep = heads // keys.shape[1]
    k, v = keys.repeat_interleave(rep, dim=1).double(), values.repeat_interleave(rep, dim=1).double()
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) / q.shape[-1] ** 0.5
    visible = torch.arange(k.shape[0])[None, :] <= torch.arange(start, start + n)[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).float()


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(16, 4, 64), (8, 8, 32), (4, 1, 128), (6, 2, 16)])
@pytest.mark.parametrize("threads", [1, 2])
def test_chunk_kernel_matches_plain_causal_attention(heads, kv_heads, head_dim, threads):
    # First chunks, chunks after cached tokens, block edges, one- and few-token chunks, a
    # context past 1K; block sizes that hold whole key steps and one that does not (12).
    cases = [(16, 0, 128), (16, 384, 128), (16, 17, 33), (16, 5, 2), (16, 0, 3), (16, 1000, 70),
             (8, 40, 57), (12, 31, 29)]
    for bs, start, n in cases:
        kv, tables, seqs = _filled_pool([start + n], bs, kv_heads, head_dim, seed=start + n)
        k, v = seqs[0]
        qk = torch.randn(n, heads + kv_heads, head_dim)
        q = qk[:, :heads]  # strided rows, as the layer passes them
        out = torch.full((n, heads, head_dim), float("nan"))
        assert cpu_attention.applies(q, kv.k[0])
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            cpu_attention.paged_chunk_attention(q, kv.k[0], kv.v[0], torch.tensor(tables[0]), start, out, bs)
        finally:
            torch.set_num_threads(before)
        torch.testing.assert_close(out, _causal_reference(q, k, v, start), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"block {bs}, start {start}, n {n}: {m}")


@needs_kernel
def test_layer_chunks_take_the_kernel_and_agree_with_the_torch_path():
    arch = _arch(8, 2, 64)
    layer = DecoderLayer(arch)
    bs = 16
    kv, tables, _ = _filled_pool([300, 120, 40], bs, arch.num_kv_heads, arch.head_dim)
    # A chunk after cached tokens, a first chunk and a decode in one batch.
    parts = [PartSpec(39, 1, tables[2], True), PartSpec(200, 100, tables[0], True),
             PartSpec(0, 120, tables[1], False)]
    meta = build_attention_metadata(parts, bs, "cpu")
    qk = torch.randn(meta.num_tokens, arch.num_heads + arch.num_kv_heads, arch.head_dim)
    q = qk[:, :arch.num_heads]
    new_k = kv.k[0].index_select(0, meta.slot_mapping)
    new_v = kv.v[0].index_select(0, meta.slot_mapping)
    calls, fast, slow = _kernel_and_torch_path(layer, "paged_chunk_attention", q, meta, kv, new_k, new_v)
    assert calls == [100, 120]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
