"""Roofline lower bound of one hybrid batch from the model's shapes.

FLOPs = 2 * (linear parameters touched) * tokens  (QKV, O, gate/up, down of every layer for
        every token; the LM head only for the sampled rows)
      + attention: 4 * heads * head_dim * (visible keys summed over query tokens) per layer
        (QK^T and PV; a prefill chunk of n tokens over s cached ones sees n*s + n(n+1)/2 keys
        in all, a decode with context c (its own token included) sees c).
Bytes = every weight read once (linear, norms, LM head, the embedding rows used)
      + the K/V each part attends to, read once per layer (a chunk reads s + n keys, a decode c)
      + the new tokens' K/V written once per layer.
On a stage holding the whole model (embedding and LM head), its last layer counts as it runs
(model/llama.py): QKV and the K/V writes for every token, everything after only for the sampled
rows, each attending to its whole context as a decode does.

The batch is a :class:`pp_sarathi.cost.BatchShape`, the one the simulator's cost model takes.
Activations are not counted (they are small next to weights and KV at these shapes and could in
principle stay on chip), so the bound is optimistic.

bound = max(FLOPs / peak FLOP/s, bytes / bandwidth) with peaks MEASURED on the device
(:func:`pp_sarathi.bench.device.measure_peaks`); achieved fraction = bound / measured time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..cost.shape import BatchShape
from ..model.arch import ModelArch
from ..model.shapes import embedding_params, kv_elems_per_token, linear_params_per_layer, qkv_params_per_layer


@dataclass
class Roofline:
    flops: float
    bytes: float
    compute_s: float  # flops / peak
    memory_s: float  # bytes / bandwidth
    bound_s: float

    @property
    def limiter(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    def fraction(self, measured_s: float) -> float:
        return self.bound_s / measured_s if measured_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "limiter": self.limiter}


def batch_flops_bytes(arch: ModelArch, shape: BatchShape, elem_bytes: int,
                      num_layers: int | None = None, with_embed: bool = True,
                      with_head: bool = True) -> tuple[float, float]:
    L = arch.num_layers if num_layers is None else num_layers
    h = arch.hidden_size
    T = shape.num_tokens
    rows = shape.num_sampled
    lin = linear_params_per_layer(arch)
    head = embedding_params(arch) if with_head else 0
    # Keys attended (FLOPs) and keys read (bytes).
    keys_attended = sum(n * s + n * (n + 1) // 2 for n, s in shape.prefills) + sum(shape.decode_ctx)
    keys_read = sum(s + n for n, s in shape.prefills) + sum(shape.decode_ctx)
    attn = 4.0 * arch.num_heads * arch.head_dim  # FLOPs per query-key pair
    kv_tok = kv_elems_per_token(arch)  # K and V elements per token per layer
    full = L - 1 if with_embed and with_head and L and rows < T else L  # layers over every row
    flops = 2.0 * lin * T * full + attn * keys_attended * full + 2.0 * head * rows
    kv_elems = full * kv_tok * (keys_read + T)
    if full < L:  # the model's last layer
        qkv = qkv_params_per_layer(arch)
        flops += 2.0 * qkv * T + 2.0 * (lin - qkv) * rows + attn * sum(shape.sampled_ctx)
        kv_elems += kv_tok * (sum(shape.sampled_ctx) + T)
    weight_elems = L * (lin + 2 * h) + (head + h if with_head else 0) + (T * h if with_embed else 0)
    return flops, float(elem_bytes) * (weight_elems + kv_elems)


def roofline(arch: ModelArch, shape: BatchShape, elem_bytes: int, peak_flops: float,
             bandwidth: float, **kw) -> Roofline:
    flops, nbytes = batch_flops_bytes(arch, shape, elem_bytes, **kw)
    c, m = flops / peak_flops, nbytes / bandwidth
    return Roofline(flops, nbytes, c, m, max(c, m))
