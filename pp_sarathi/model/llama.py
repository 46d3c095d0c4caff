"""A LLaMA-family decoder restricted to a layer range, executing hybrid batches.

A hybrid batch is a flat run of tokens from several parts (a prefill chunk, decodes, ...).
Every linear layer runs once over all of them; only attention looks at parts separately.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_attention, cpu_elementwise
from .arch import ModelArch, rope_tables
from .cpu_linear import PackedLinear
from .kv_cache import AttentionMetadata, KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        return (x.dim() == 2 and x.stride(-1) == 1 and self.weight.dtype == torch.float32
                and cpu_elementwise.applies(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_applies(x):
            return cpu_elementwise.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # Already float32: the same formula as below, as one fused kernel.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in float32 whatever the activation dtype, as the reference does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def add_and_norm(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``h += residual`` (in place), then the norm of ``h``: one pass on the CPU kernels."""
        if self._kernel_applies(h) and h.is_contiguous() and residual.is_contiguous():
            return cpu_elementwise.add_rms_norm(h, residual, self.weight, self.eps)
        h += residual
        return self(h)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        self.arch = arch
        h = arch.hidden_size
        self.input_layernorm = RMSNorm(h, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, arch.rms_norm_eps)
        # Q, K, V fused into one matmul, gate and up into another.
        self.qkv_proj = PackedLinear(h, arch.q_size + 2 * arch.kv_size, bias=arch.qkv_bias)
        self.o_proj = PackedLinear(arch.q_size, h, bias=arch.o_bias)
        self.gate_up_proj = PackedLinear(h, 2 * arch.intermediate_size, bias=arch.mlp_bias)
        self.down_proj = PackedLinear(arch.intermediate_size, h, bias=arch.mlp_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata,
                k_pool: torch.Tensor, v_pool: torch.Tensor, only_sampled: bool = False) -> torch.Tensor:
        """``x [T, h]`` -> ``[T, h]``; with ``only_sampled`` (the model's last layer) every row
        still writes its K/V, but only the rows in ``meta.logits_indices`` go on: ``[L, h]``."""
        a = self.arch
        qkv = self.qkv_proj(self.input_layernorm(x))
        # Q and K side by side as heads of one tensor: one rotary pass over both.
        heads = a.num_heads + a.num_kv_heads
        qk = qkv[:, :a.q_size + a.kv_size].view(-1, heads, a.head_dim)
        if cpu_elementwise.applies(qkv):
            cpu_elementwise.rotary_(qkv, heads, a.head_dim, cos[:, 0], sin[:, 0])  # qk sees it in place
        else:
            qk = qk * cos + _rotate_half(qk) * sin
        q, k = qk.split([a.num_heads, a.num_kv_heads], dim=1)
        v = qkv[:, a.q_size + a.kv_size:].view(-1, a.num_kv_heads, a.head_dim)
        k_pool.index_copy_(0, meta.slot_mapping, k)
        v_pool.index_copy_(0, meta.slot_mapping, v)
        if only_sampled:
            rows = meta.logits_indices
            q, x, meta, k, v = q[rows], x[rows], meta.sampled_rows(), None, None
            if not rows.numel():
                return x
        attn = self._attention(q, meta, k_pool, v_pool, k, v)
        # Residuals and the gated activation accumulate into the fresh projection outputs
        # (fewer activation-sized allocations per layer; same sums).
        h = self.o_proj(attn.reshape(-1, a.q_size))
        gate_up = self.gate_up_proj(self.post_attention_layernorm.add_and_norm(h, x))
        if cpu_elementwise.applies(gate_up):
            act = cpu_elementwise.silu_mul(gate_up)
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate)
            act *= up
        out = self.down_proj(act)
        out += h
        return out

    def _attention(self, q, meta: AttentionMetadata, k_pool, v_pool, k=None, v=None) -> torch.Tensor:
        """Attention of every part; ``k``/``v`` are this batch's new K/V (rows as ``q``), which
        a first chunk uses directly; without them it reads its own slots back from the cache."""
        out = torch.empty_like(q)
        gqa = self.arch.num_kv_heads != self.arch.num_heads
        bs = meta.block_size
        k_blocks = k_pool.view(-1, bs, *k_pool.shape[1:])  # [num_blocks, block_size, Hkv, d]
        v_blocks = v_pool.view(-1, bs, *v_pool.shape[1:])
        in_place = not self.arch.sliding_window and cpu_attention.applies(q, k_pool)
        for row, n, start, blocks, mask in meta.chunks:
            if in_place:
                cpu_attention.paged_chunk_attention(q[row:row + n], k_pool, v_pool, blocks, start,
                                                    out[row:row + n], bs)
                continue
            qc = q[row:row + n].transpose(0, 1).unsqueeze(0)  # [1, H, n, d]
            if start == 0:  # the chunk starts its sequence: its own K/V are all it sees
                if k is not None:
                    kc, vc = k[row:row + n], v[row:row + n]
                else:
                    own = meta.slot_mapping[row:row + n]
                    kc, vc = k_pool.index_select(0, own), v_pool.index_select(0, own)
            else:
                ctx = start + n
                kc = k_blocks.index_select(0, blocks).flatten(0, 1)[:ctx]  # [ctx, Hkv, d]
                vc = v_blocks.index_select(0, blocks).flatten(0, 1)[:ctx]
            kc = kc.transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, d]
            vc = vc.transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=gqa)
            out[row:row + n] = o[0].transpose(0, 1)
        if meta.decode_rows is not None and meta.decode_lens is not None and in_place:
            out[meta.decode_rows] = cpu_attention.paged_decode_attention(
                q[meta.decode_rows], k_pool, v_pool, meta.decode_blocks, meta.decode_lens, bs)
        elif meta.decode_rows is not None:
            qd = q[meta.decode_rows].unsqueeze(2)  # [D, H, 1, d]
            shape = (meta.decode_blocks.shape[0], -1, *k_pool.shape[1:])  # [D, max_blocks * bs, Hkv, d]
            flat = meta.decode_blocks.view(-1)
            kd = k_blocks.index_select(0, flat).view(shape).transpose(1, 2)  # [D, Hkv, width, d]
            vd = v_blocks.index_select(0, flat).view(shape).transpose(1, 2)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, enable_gqa=gqa)
            out[meta.decode_rows] = o.squeeze(2)
        return out


class StageModel(nn.Module):
    """Layers ``[start, end)`` of the model; embedding on the first stage, norm + LM head on the last."""

    def __init__(self, arch: ModelArch, start: int, end: int):
        super().__init__()
        if not 0 <= start < end <= arch.num_layers:
            raise ValueError(f"layer range [{start}, {end}) outside [0, {arch.num_layers})")
        self.arch, self.start, self.end = arch, start, end
        self.is_first = start == 0
        self.is_last = end == arch.num_layers
        # A stage holding the whole model carries its last layer on only for the rows the LM
        # head reads (all that later tokens need of the other rows there is their K/V). In a
        # pipeline that would leave the last stage idle for what it saves: stages of whole
        # layers cannot hand that time to the others (docs/benchmarks.md, issue 16, section 8).
        # False keeps every row (an A/B run; the start-up probe, which fits full layers).
        self.prune_last_layer = True
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size) if self.is_first else None
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(start, end))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps) if self.is_last else None
        self.lm_head = PackedLinear(arch.hidden_size, arch.vocab_size, bias=False) if self.is_last else None
        self.reset_rope()

    def reset_rope(self) -> None:
        """(Re)build the rotary tables; needed after ``to_empty`` wiped the buffers."""
        device = self.layers[0].o_proj.weight.device
        device = "cpu" if device.type == "meta" else device
        cos, sin = rope_tables(self.arch)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def prepare_kernels(self) -> None:
        """Build now what the first forward would otherwise build inside the serving loop
        (the packed CPU weights of model/cpu_linear.py); a no-op where nothing applies."""
        for m in self.modules():
            if isinstance(m, PackedLinear):
                m.packed_weight()

    @property
    def num_local_layers(self) -> int:
        return self.end - self.start

    def new_kv_cache(self, num_blocks: int, block_size: int) -> KVCache:
        p = next(self.parameters())
        a = self.arch
        return KVCache(self.num_local_layers, num_blocks, block_size, a.num_kv_heads, a.head_dim,
                       p.dtype, p.device)

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, meta: AttentionMetadata, kv: KVCache) -> torch.Tensor:
        """Token ids ``[T]`` on the first stage, hidden ``[T, h]`` elsewhere.

        Returns hidden states ``[T, h]``, or on the last stage float32 logits ``[L, vocab]`` of
        the rows in ``meta.logits_indices``.
        """
        x = self.embed_tokens(inputs) if self.is_first else inputs
        cos = self.rope_cos[meta.positions].to(x.dtype)[:, None, :]
        sin = self.rope_sin[meta.positions].to(x.dtype)[:, None, :]
        prune = (self.is_first and self.is_last and self.prune_last_layer
                 and meta.logits_indices.numel() < x.shape[0])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, meta, kv.k[i], kv.v[i], prune and i == last)
        if not self.is_last:
            return x
        return self.lm_head(self.norm(x if prune else x[meta.logits_indices])).float()
