"""The CPU row-wise kernels (model/csrc/elementwise.c) against the torch expressions they
replace, and the decoder layer with them against the layer without them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pp_sarathi.model import cpu_elementwise, cpu_kernels
from pp_sarathi.model.arch import ModelArch, rope_tables
from pp_sarathi.model.kv_cache import KVCache, PartSpec, build_attention_metadata
from pp_sarathi.model.llama import DecoderLayer, RMSNorm, _rotate_half

needs_kernel = pytest.mark.skipif(cpu_kernels.library() is None, reason="no C compiler for the CPU kernels")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


# 1 and 3 rows stay on one thread, 64 rows of 1024 split across threads; 72 and 100 leave a
# scalar tail after the vector loop.
SHAPES = [(1, 1024), (3, 72), (64, 1024), (5, 100)]


@needs_kernel
@pytest.mark.parametrize("rows,dim", SHAPES)
def test_rms_norm_matches_torch(rows, dim, threads):
    g = torch.Generator().manual_seed(rows * dim)
    x = torch.randn(rows, dim, generator=g) * 3
    w = torch.randn(dim, generator=g)
    want = F.rms_norm(x.double(), (dim,), w.double(), 1e-5)
    torch.testing.assert_close(cpu_elementwise.rms_norm(x, w, 1e-5).double(), want, rtol=2e-6, atol=2e-6)
    # Strided rows (a slice of wider rows) read in place.
    wide = torch.randn(rows, dim + 40, generator=g)
    torch.testing.assert_close(cpu_elementwise.rms_norm(wide[:, 8:8 + dim], w, 1e-5),
                               F.rms_norm(wide[:, 8:8 + dim], (dim,), w, 1e-5), rtol=2e-6, atol=2e-6)


@needs_kernel
@pytest.mark.parametrize("rows,dim", SHAPES)
def test_add_rms_norm_adds_in_place_then_normalises(rows, dim, threads):
    g = torch.Generator().manual_seed(7 + rows)
    h, r, w = torch.randn(rows, dim, generator=g), torch.randn(rows, dim, generator=g), torch.randn(dim, generator=g)
    total = h + r
    out = cpu_elementwise.add_rms_norm(h, r, w, 1e-6)
    assert torch.equal(h, total)
    torch.testing.assert_close(out, F.rms_norm(total, (dim,), w, 1e-6), rtol=2e-6, atol=2e-6)


@needs_kernel
@pytest.mark.parametrize("rows,inter", [(1, 2816), (7, 100), (128, 2816)])
def test_silu_mul_matches_torch(rows, inter, threads):
    g = torch.Generator().manual_seed(inter)
    gate_up = torch.randn(rows, 2 * inter, generator=g) * 6
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # far tails of exp and the origin
    gate, up = gate_up.double().chunk(2, dim=-1)
    want = F.silu(gate) * up
    torch.testing.assert_close(cpu_elementwise.silu_mul(gate_up).double(), want, rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("rows,heads,head_dim", [(1, 20, 64), (33, 20, 64), (4, 3, 20)])
def test_rotary_in_place_matches_torch(rows, heads, head_dim, threads):
    g = torch.Generator().manual_seed(heads * head_dim)
    extra = 2 * head_dim  # V's columns after the rotated heads stay as they were
    x = torch.randn(rows, heads * head_dim + extra, generator=g)
    ang = torch.rand(rows, head_dim // 2, generator=g) * 100
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    heads_view = x[:, :heads * head_dim].view(rows, heads, head_dim)
    want = heads_view * cos[:, None] + _rotate_half(heads_view) * sin[:, None]
    v_before = x[:, heads * head_dim:].clone()
    cpu_elementwise.rotary_(x, heads, head_dim, cos, sin)
    torch.testing.assert_close(x[:, :heads * head_dim].view(rows, heads, head_dim), want, rtol=1e-6, atol=1e-6)
    assert torch.equal(x[:, heads * head_dim:], v_before)


def test_kernels_refuse_what_they_do_not_cover():
    assert not cpu_elementwise.applies(torch.zeros(2, 8, dtype=torch.bfloat16))
    assert not cpu_elementwise.applies(torch.zeros(2, 8, device="meta"))
    with pytest.raises(ValueError):
        cpu_elementwise.silu_mul(torch.zeros(2, 7))
    with pytest.raises(ValueError):
        cpu_elementwise.rotary_(torch.zeros(2, 16), 3, 8, torch.zeros(2, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError):
        cpu_elementwise.add_rms_norm(torch.zeros(2, 8), torch.zeros(8, 2).t(), torch.ones(8), 1e-6)
    with pytest.raises(ValueError):  # a bfloat16 tensor would be read as half as many rows' bytes
        cpu_elementwise.rms_norm(torch.zeros(2, 8, dtype=torch.bfloat16), torch.ones(8), 1e-6)
    with pytest.raises(ValueError):
        cpu_elementwise.rms_norm(torch.zeros(2, 8), torch.ones(4), 1e-6)
    # A norm over rows that are not contiguous floats keeps the torch path.
    norm, cols = RMSNorm(8, 1e-6), torch.randn(8, 2).t()
    torch.testing.assert_close(norm(cols), F.rms_norm(cols, (8,), norm.weight, 1e-6))


@needs_kernel
@pytest.mark.parametrize("bias", [False, True], ids=["llama", "qkv-bias"])
def test_layer_with_the_kernels_matches_the_torch_ops(threads, bias, monkeypatch):
    arch = ModelArch(family="qwen2" if bias else "llama", vocab_size=64, hidden_size=128, intermediate_size=200,
                     num_layers=1, num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=256,
                     rms_norm_eps=1e-6, rope_theta=10000.0, qkv_bias=bias)
    torch.manual_seed(0)
    layer = DecoderLayer(arch)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    cos_t, sin_t = rope_tables(arch)
    specs = [PartSpec(0, 24, [0, 1], False), PartSpec(16, 1, [2, 3], True), PartSpec(40, 9, [4, 5, 6, 7], True)]
    meta = build_attention_metadata(specs, 16, "cpu", None)
    x = torch.randn(meta.positions.shape[0], arch.hidden_size)
    calls = []
    for name in ("rms_norm", "add_rms_norm", "silu_mul", "rotary_"):
        def counted(*args, _f=getattr(cpu_elementwise, name), _name=name):
            calls.append(_name)
            return _f(*args)
        monkeypatch.setattr(cpu_elementwise, name, counted)
    outs = []
    for on in (True, False):
        kv = KVCache(1, 8, 16, arch.num_kv_heads, arch.head_dim, torch.float32, "cpu")
        g = torch.Generator().manual_seed(3)  # the same cached tokens before each pass
        kv.k[0].copy_(torch.randn(kv.k[0].shape, generator=g))
        kv.v[0].copy_(torch.randn(kv.v[0].shape, generator=g))
        monkeypatch.setattr(cpu_elementwise, "ENABLED", on)
        with torch.inference_mode():
            outs.append(layer(x, cos_t[meta.positions][:, None], sin_t[meta.positions][:, None], meta,
                              kv.k[0], kv.v[0]))
    assert sorted(calls) == ["add_rms_norm", "rms_norm", "rotary_", "silu_mul"]  # the first pass only
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
