"""The roofline predictor: FLOPs and bytes of each op against the peak rates of a
:class:`~pp_sarathi.config.HardwareConfig` (max of compute and memory time plus a launch cost
per kernel), the tensor-parallel degree dividing the work and adding ring all-reduces."""
from __future__ import annotations

from dataclasses import asdict

from ..config import HardwareConfig
from ..model.arch import ModelArch
from ..model.shapes import dtype_bytes, embedding_params, kv_bytes_per_token, linear_params_per_layer
from .predictor import CostModel

# Per-layer kernels outside the linear ops and attention (norms x2, rotary x2, KV writes x2,
# activation, residual adds x2): used for the roofline's launch overhead.
MISC_KERNELS = 9


class RooflineCosts(CostModel):
    """FLOPs and bytes per op against the peaks of a :class:`HardwareConfig`."""

    source = "roofline"

    def __init__(self, arch: ModelArch, dtype: str, hw: HardwareConfig):
        super().__init__(arch, dtype)
        if hw.tp < 1:
            raise ValueError(f"hardware.tp must be >= 1, got {hw.tp}")
        if arch.num_heads % hw.tp or arch.num_kv_heads % hw.tp and arch.num_kv_heads >= hw.tp:
            raise ValueError(f"hardware.tp={hw.tp} does not divide the model's {arch.num_heads} heads "
                             f"/ {arch.num_kv_heads} KV heads")
        self.hw = hw
        self.flops = hw.peak_tflops * 1e12 * hw.flops_efficiency
        self.bw = hw.mem_bw_gbps * 1e9 * hw.mem_efficiency
        self.launch = hw.kernel_overhead_us * 1e-6
        self.tp = hw.tp
        a = arch
        # (K, N) of the four per-layer GEMMs, sharded column/row-wise over tp.
        self._gemms = [(a.hidden_size, a.q_size + 2 * a.kv_size), (a.q_size, a.hidden_size),
                       (a.hidden_size, 2 * a.intermediate_size), (a.intermediate_size, a.hidden_size)]
        # KV heads are replicated when tp exceeds them (MQA/GQA).
        self._kv_shard = max(1, min(self.tp, a.num_kv_heads))

    def _roof(self, flops: float, nbytes: float, kernels: int = 1) -> float:
        return max(flops / self.flops, nbytes / self.bw) + kernels * self.launch

    def _rows(self, t: int) -> int:
        tile = max(1, self.hw.gemm_tile)
        return -(-t // tile) * tile

    def gemm(self, t: int, k: int, n: int) -> float:
        """[t, k] x [k, n] with the weight split over tp ranks."""
        e = self.elt
        flops = 2.0 * self._rows(t) * k * n / self.tp
        nbytes = (k * n / self.tp + t * k + t * n / self.tp) * e
        return self._roof(flops, nbytes)

    def linear(self, t: int) -> float:
        return sum(self.gemm(t, k, n) for k, n in self._gemms)

    def misc(self, t: int) -> float:
        a, e = self.arch, self.elt
        # Norms (2 x read+write h), residual adds (2 x 3h), rotary on q and k (read+write),
        # KV cache writes, activation silu(gate)*up (read 2i, write i); TP-sharded parts / tp.
        elems = t * (10 * a.hidden_size + 2 * a.q_size / self.tp + 4 * a.kv_size / self._kv_shard
                     + 3 * a.intermediate_size / self.tp)
        return self._roof(0.0, elems * e, MISC_KERNELS)

    def attn_prefill(self, chunk: int, cached: int) -> float:
        a, e = self.arch, self.elt
        # QK^T and PV over cached keys plus the causal half of the chunk's own keys.
        pairs = chunk * (cached + (chunk + 1) / 2.0)
        flops = 4.0 * pairs * a.q_size / self.tp
        nbytes = ((cached + chunk) * 2 * a.kv_size / self._kv_shard + 2 * chunk * a.q_size / self.tp) * e
        return self._roof(flops, nbytes)

    def attn_decode(self, ctx: list[int]) -> float:
        a, e = self.arch, self.elt
        total = float(sum(ctx))  # a paged decode kernel reads each request's own context
        flops = 4.0 * total * a.q_size / self.tp
        nbytes = (total * 2 * a.kv_size / self._kv_shard + 2 * len(ctx) * a.q_size / self.tp) * e
        return self._roof(flops, nbytes)

    def embed(self, t: int) -> float:
        return self._roof(0.0, 2.0 * t * self.arch.hidden_size * self.elt)

    def lm_head(self, rows: int) -> float:
        return self.gemm(rows, self.arch.hidden_size, self.arch.vocab_size)

    def sample(self, rows: int) -> float:
        return self._roof(0.0, rows * self.arch.vocab_size * 4.0 / self.tp)

    def overhead(self, parts: int, t: int) -> float:
        return self.hw.batch_overhead_us * 1e-6

    @property
    def allreduces_per_layer(self) -> int:
        return 2 if self.tp > 1 else 0

    def allreduce(self, nbytes: int) -> float:
        if self.tp <= 1:
            return 0.0
        hw = self.hw
        return hw.tp_allreduce_latency_us * 1e-6 + 2.0 * (self.tp - 1) / self.tp * nbytes / (
            hw.tp_allreduce_bw_gbps * 1e9)

    def p2p(self, nbytes: int) -> float:
        hw = self.hw
        share = nbytes / self.tp if hw.pp_scatter_gather else nbytes
        return hw.pp_link_latency_us * 1e-6 + share / (hw.pp_link_bw_gbps * 1e9)

    def describe(self) -> dict:
        return {"source": self.source, "dtype": self.dtype, "hardware": asdict(self.hw)}


def kv_capacity_tokens(arch: ModelArch, hw: HardwareConfig, layers: int, dtype: str,
                       utilisation: float = 0.9) -> int:
    """KV tokens one stage can hold: (memory - stage weights) / per-token KV bytes (paper's B rule).

    Weights count the stage's linear layers plus one vocab x hidden matrix (embedding or LM head),
    all split over the tensor-parallel ranks; KV heads are split over at most as many ranks as
    there are KV heads."""
    e = dtype_bytes(dtype)
    weights = layers * linear_params_per_layer(arch) * e / hw.tp + 2 * embedding_params(arch) * e / hw.tp / 2
    kv_per_token = kv_bytes_per_token(arch, e, layers) / max(1, min(hw.tp, arch.num_kv_heads))
    free = hw.memory_gb * 1e9 * utilisation - weights
    return max(0, int(free // kv_per_token))
