"""How long a micro-batch takes on a pipeline stage: the predictor interface and the per-op
composition every cost model shares.

A stage's time is composed from per-operation costs, the same decomposition the runtime
executes (pp_sarathi/model/llama.py):

    per layer:  linear(T)             fused QKV, O, gate/up, down over all T tokens at once
              + misc(T)               norms, rotary, KV writes, activation, residuals, Python
              + sum attn_prefill(c, k)  one per multi-token part (chunk c over k cached tokens)
              + attn_decode(ctx)        all single-token parts together
              + 2 * allreduce(T*h)     only with tensor parallelism
    stage:      layers * per layer + overhead(parts, T)
              + embed(T) on the first stage + lm_head(L) + sample(L) on the last (L = sampled rows)
              - what the model's last layer skips, on a stage holding the whole model: after QKV
                only the L sampled rows go on, each attending as a decode (last_layer_saving)
    transport:  hop s -> s+1, return to rank 0; with a measured transport also the time a stage
                is busy sending and taking in data that has already arrived

Every call is plain Python over ints and floats (no numpy), so that a scheduler can ask for
many candidate batches per step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..model.arch import ModelArch
from ..model.shapes import dtype_bytes, linear_params_per_layer, qkv_params_per_layer
from .messages import activation_bytes, hop_message_bytes, result_message_bytes
from .shape import BatchShape


@runtime_checkable
class StageTimePredictor(Protocol):
    """Predicted seconds of one pipeline stage computing one micro-batch."""

    def stage_seconds(self, shape: BatchShape, num_layers: int, first: bool = False, last: bool = False) -> float:
        """Seconds of a stage holding ``num_layers`` decoder layers; ``first`` adds the
        embedding, ``last`` the LM head and sampling (both for a single-stage pipeline)."""
        ...


@dataclass
class StageTimes:
    """One micro-batch on every stage of a pipeline (seconds)."""

    compute: list[float]  # per stage
    transfer: list[float]  # hop s -> s+1: upstream compute end -> downstream compute start when it waits (len = stages - 1)
    ret: float  # last stage's compute end -> the driver has the sampled tokens (0 when pp = 1)
    send: list[float] = field(default_factory=list)  # per stage: busy posting its output after computing (default 0)
    recv: list[float] = field(default_factory=list)  # per stage: taking in data that is already there (default 0)


class CostModel:
    """Composes per-op costs into stage and pipeline times; subclasses provide the ops.

    Implements :class:`StageTimePredictor`.
    """

    source = "base"
    cores = 0  # CPU cores the stages share (0: every stage has its own device)
    threads = 1
    # Step-to-step variation of a stage's compute time: standard deviation of its logarithm
    # (measured by a profile; 0 = deterministic).
    jitter = 0.0

    def jitter_at(self, seconds: float) -> float:
        """The step-to-step variation of a stage step that takes ``seconds`` (a profile
        measures it per step size; default: :attr:`jitter` whatever the size)."""
        return self.jitter

    def __init__(self, arch: ModelArch, dtype: str):
        self.arch = arch
        self.dtype = dtype
        self.elt = dtype_bytes(dtype)
        self._per_token: dict[int, float] = {}

    # ---- per-op costs (seconds), implemented by subclasses -----------------------------
    def linear(self, t: int) -> float: raise NotImplementedError  # noqa: E704
    def misc(self, t: int) -> float: raise NotImplementedError  # noqa: E704
    def attn_prefill(self, chunk: int, cached: int) -> float: raise NotImplementedError  # noqa: E704
    def attn_decode(self, ctx: list[int]) -> float: raise NotImplementedError  # noqa: E704
    def embed(self, t: int) -> float: raise NotImplementedError  # noqa: E704
    def lm_head(self, rows: int) -> float: raise NotImplementedError  # noqa: E704
    def sample(self, rows: int) -> float: raise NotImplementedError  # noqa: E704
    def overhead(self, parts: int, t: int) -> float: raise NotImplementedError  # noqa: E704
    def allreduce(self, nbytes: int) -> float: return 0.0  # noqa: E704
    def p2p(self, nbytes: int) -> float: raise NotImplementedError  # noqa: E704

    @property
    def allreduces_per_layer(self) -> int:
        return 0

    # ---- composition -------------------------------------------------------------------
    def token_bound(self, t: int) -> float:
        """Per-layer cost that depends only on the token count (memoised)."""
        c = self._per_token.get(t)
        if c is None:
            c = self.linear(t) + self.misc(t)
            if self.allreduces_per_layer:
                c += self.allreduces_per_layer * self.allreduce(t * self.arch.hidden_size * self.elt)
            self._per_token[t] = c
        return c

    def attention(self, b: BatchShape) -> float:
        """One layer's attention over all parts of ``b``."""
        c = sum(self.attn_prefill(ch, ca) for ch, ca in b.prefills)
        if b.decode_ctx:
            c += self.attn_decode(b.decode_ctx)
        return c

    def layer_time(self, b: BatchShape) -> float:
        """One decoder layer on ``b``."""
        c = self.token_bound(b.num_tokens)
        for chunk, cached in b.prefills:
            c += self.attn_prefill(chunk, cached)
        if b.decode_ctx:
            c += self.attn_decode(b.decode_ctx)
        return c

    def last_layer_saving(self, b: BatchShape) -> float:
        """Seconds the model's last layer does not spend on ``b`` on a stage that holds the
        whole model (model/llama.py): rows that reach no LM head stop once their K/V are cached,
        so the projections after QKV run over the sampled rows alone, and only those rows
        attend, each as a decode does. The norms, rotary and KV writes are costed as before.
        Without an architecture (a hand-made model) nothing is known to be skipped."""
        rows, total = b.num_sampled, b.num_tokens
        if rows >= total or self.arch is None:
            return 0.0
        after_qkv = 1.0 - qkv_params_per_layer(self.arch) / linear_params_per_layer(self.arch)
        kept = self.linear(rows) if rows else 0.0
        saved = after_qkv * (self.linear(total) - kept) + self.attention(b)
        if b.sampled_ctx:
            saved -= self.attn_decode(b.sampled_ctx)
        return saved

    def _stage(self, b: BatchShape, num_layers: int, per_layer: float, over: float, first: bool, last: bool) -> float:
        t = num_layers * per_layer + over
        if first:
            t += self.embed(b.num_tokens)
        if last and b.num_sampled:
            t += self.lm_head(b.num_sampled) + self.sample(b.num_sampled)
        if first and last and num_layers:
            t -= self.last_layer_saving(b)
        return t

    def stage_seconds(self, shape: BatchShape, num_layers: int, first: bool = False, last: bool = False) -> float:
        """See :meth:`StageTimePredictor.stage_seconds`."""
        return self._stage(shape, num_layers, self.layer_time(shape),
                           self.overhead(shape.num_parts, shape.num_tokens), first, last)

    def activation_bytes(self, b: BatchShape) -> int:
        return activation_bytes(b.num_tokens, self.arch.hidden_size, self.elt)

    def hop_time(self, b: BatchShape) -> float:
        """Header + plan metadata + hidden states, as three messages (:mod:`.messages`)."""
        head, meta, hidden = hop_message_bytes(b.meta_ints, b.num_tokens, self.arch.hidden_size, self.elt)
        return self.p2p(head) + self.p2p(meta) + self.p2p(hidden)

    def return_time(self, b: BatchShape) -> float:
        return sum(self.p2p(m) for m in result_message_bytes(b.num_parts))

    def send_time(self, b: BatchShape, position: str) -> float:
        """Time a stage (``position``: first, mid or last) is busy handing its output to the
        transport after computing (0: asynchronous sends cost nothing)."""
        return 0.0

    def recv_time(self, b: BatchShape) -> float:
        """Time a stage needs to take in a micro-batch whose data has already arrived."""
        return 0.0

    @property
    def measured_transport(self) -> bool:
        """Sends are eager with measured receive costs (else: one rendezvous per hop)."""
        return False

    def stage_times(self, b: BatchShape, layers: list[int]) -> StageTimes:
        """``b`` on a pipeline whose stages hold ``layers[s]`` layers each."""
        per_layer = self.layer_time(b)
        over = self.overhead(b.num_parts, b.num_tokens)
        n = len(layers)
        compute = [self._stage(b, c, per_layer, over, s == 0, s == n - 1) for s, c in enumerate(layers)]
        if n == 1:
            return StageTimes(compute, [], 0.0)
        hop = self.hop_time(b)
        if not self.measured_transport:
            return StageTimes(compute, [hop] * (n - 1), self.return_time(b))
        mid = self.send_time(b, "mid") if n > 2 else 0.0
        send = [self.send_time(b, "first")] + [mid] * (n - 2) + [self.send_time(b, "last")]
        return StageTimes(compute, [hop] * (n - 1), self.return_time(b), send, [0.0] + [self.recv_time(b)] * (n - 1))

    def describe(self) -> dict:
        return {"source": self.source, "dtype": self.dtype}
