"""The measured predictor: per-op costs from a profile CSV taken on this device.

The profile (:mod:`pp_sarathi.sim.profile`) measures under the conditions of a pipeline stage
(the stage's own layers, so weights stream from memory; co-running stage processes). From it:
piecewise-linear interpolation over the token count for the linear layers, over the
(chunk, cached) and (batch, context) grids for attention; least squares for the per-batch
overhead (parts, tokens) and for misc(T) = a + b*T per layer, fitted to whole measured stage
steps (``stage`` rows); the runtime's transport and driver loop (``link_*`` rows) as
a + b*tokens; the step-to-step spread of stage steps (``jitter``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..model.arch import ModelArch
from .fit import Interp1D, Interp2D, LinearFit, straighten, weighted_lstsq
from .predictor import CostModel
from .profile_csv import LINEAR_OPS, arch_from_profile, layer_row_shape, profile_shape, read_profile, stage_row_shape
from .shape import BatchShape

# From this many tokens on, a GEMM's time grows linearly with its rows (see docs/simulator.md):
# the largest counts are timed in few calls, so their noise is averaged out by a line.
LINEAR_FROM_TOKENS = 256
# The per-layer remainder gets a second slope above this many tokens when the profile has
# enough whole-prompt stage steps: what the composed ops miss grows differently there.
MISC_KNEE_TOKENS = 1024


def _misc_feats(layers: int, tokens: int, knee: int | None) -> list[float]:
    f = [layers, layers * tokens]
    return f + [layers * max(0, tokens - knee)] if knee else f


def _overhead_feats(parts, tokens):
    return [1.0, parts, tokens]


class ProfileCosts(CostModel):
    """Per-op costs from a profile CSV (one device, one model shape, one dtype).

    ``exclude``: row indices left out of the fit (to measure held-out error)."""

    source = "profile"

    def __init__(self, arch: ModelArch, dtype: str, rows: list[dict], path: str | None = None,
                 exclude: set[int] | None = None):
        first = rows[0]
        super().__init__(arch, str(first.get("dtype") or dtype))
        self.path = path
        self.rows = rows
        self.device = first.get("device", "?")
        self.threads = first.get("threads")
        # CPU cores of the profiled host (0: unknown / not a CPU): stages beyond them time-share.
        self.cores = int(first.get("cores") or 0)
        self._jitter_fit: tuple[float, float, float, float] | None = None  # see _fit_misc
        use = [r for i, r in enumerate(rows) if not exclude or i not in exclude]
        by: dict[str, list[dict]] = {}
        for r in use:
            by.setdefault(r["op"], []).append(r)

        def need(op):
            if op not in by:
                raise ValueError(f"profile {path or ''} has no {op!r} rows")
            return by[op]

        def interp(op, key="tokens"):
            rs = need(op)
            return Interp1D([r[key] for r in rs], [r["seconds"] for r in rs])

        if "linear" in by:  # per layer, measured in execution order over a stage's layers
            rs = by["linear"]
            self._linear = {"linear": Interp1D(*straighten([r["tokens"] for r in rs], [r["seconds"] for r in rs],
                                                           LINEAR_FROM_TOKENS))}
        else:
            self._linear = {op: interp(op) for op in LINEAR_OPS}
        self._embed = interp("embed")
        self._lm_head = interp("lm_head")
        self._sample = interp("sample")
        rs = need("attn_prefill")
        self._prefill = Interp2D([r["chunk"] for r in rs], [r["cached"] for r in rs], [r["seconds"] for r in rs])
        rs = need("attn_decode")
        self._decode = Interp2D([r["batch"] for r in rs], [r["context"] for r in rs], [r["seconds"] for r in rs])
        rs = need("overhead")
        self._overhead = LinearFit([_overhead_feats(r["batch"], r["tokens"]) for r in rs],
                                   [r["seconds"] for r in rs], ["const", "parts", "tokens"])
        self._p2p = interp("p2p", "bytes") if "p2p" in by else None
        self._link = self._fit_links(by)
        self.misc_coef: list[float] | None = None  # misc(T) per layer: a, b (and a slope above the knee)
        self._misc_knee: int | None = None
        self.misc_source = None
        self._fit_misc(by)

    @staticmethod
    def _fit_links(by: dict[str, list[dict]]) -> dict[str, LinearFit]:
        """The runtime's own transport and driver loop (link_* rows, measured between stage
        processes that compute meanwhile): heavy-tailed, so their mean is used. a + b*tokens
        (the hidden states grow with the tokens); a constant when the fitted slope is negative
        (the shape dependence drowns in the spread)."""
        links = {}
        for op, rs in by.items():
            if op.startswith("link_") and rs:
                ys = [r["seconds_mean"] for r in rs]
                fit = LinearFit([[1.0, r["tokens"]] for r in rs], ys, ["const", "tokens"]) \
                    if len({r["tokens"] for r in rs}) >= 3 else None
                if fit is None or fit.coef[1] < 0:
                    fit = LinearFit([[1.0, 0.0] for _ in rs], ys, ["const", "tokens"])
                links[op[5:]] = fit
        return links

    def _fit_misc(self, by: dict[str, list[dict]]) -> None:
        """misc(T) = a + b*T per layer: what whole measured stage steps (or whole decoder layers)
        cost beyond the composed linear, attention, overhead and embedding / LM head / sampling
        ops; least squares relative to the step time."""
        if by.get("stage"):
            feats, ys, ws = [], [], []
            big = sum(r["chunk"] * max(1, r["prefills"]) + r["batch"] > MISC_KNEE_TOKENS for r in by["stage"])
            self._misc_knee = MISC_KNEE_TOKENS if big >= 3 else None
            for r in by["stage"]:
                b, n = stage_row_shape(r), max(1, r["layers"])
                rest = self._stage_without_misc(b, n, r["stage"])
                feats.append(_misc_feats(n, b.num_tokens, self._misc_knee))
                ys.append(r["seconds"] - rest)
                ws.append(1.0 / max(r["seconds"], 1e-9))
            self.misc_coef = weighted_lstsq(feats, ys, ws)
            self.misc_source = "stage"
            js = [r["jitter"] for r in by["stage"] if r["jitter"] > 0]
            self.jitter = float(np.sqrt(np.mean(np.square(js)))) if js else 0.0
            # Short steps vary more than long ones (a fixed hiccup is a larger share of them):
            # ln(jitter) as a line in ln(seconds) over the stage rows, kept within their range.
            pts = [(math.log(r["seconds"]), math.log(r["jitter"])) for r in by["stage"]
                   if r["jitter"] > 0 and r["seconds"] > 0]
            if len({x for x, _ in pts}) >= 3:
                slope, icpt = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
                self._jitter_fit = (float(icpt), float(slope), min(js), max(js))
        elif by.get("layer"):
            xs, ys = [], []
            for r in by["layer"]:
                b = layer_row_shape(r)
                rest = self.linear(b.num_tokens) + self.attention(b)
                xs.append([1.0, b.num_tokens])
                ys.append(max(r["seconds"] - rest, 1e-7))
            self.misc_coef = LinearFit(xs, ys, ["const", "tokens"]).coef
            self.misc_source = "layer"

    def _stage_without_misc(self, b: BatchShape, layers: int, kind: str) -> float:
        """The composed stage step (:meth:`CostModel._stage`) with every op but ``misc``."""
        return self._stage(b, layers, self.linear(b.num_tokens) + self.attention(b),
                           self.overhead(b.num_parts, b.num_tokens), kind in ("first", "only"),
                           kind in ("last", "only"))

    def stage_step(self, b: BatchShape, layers: int, kind: str) -> float:
        """A whole stage step as the misc fit sees it (``kind``: first, middle, last, only)."""
        return self._stage_without_misc(b, layers, kind) + layers * self.misc(b.num_tokens)

    @classmethod
    def from_csv(cls, path: str | Path, arch: ModelArch | None = None, dtype: str | None = None,
                 check_shape: bool = True, statistic: str = "median") -> "ProfileCosts":
        """Read and fit a profile; with ``check_shape``, refuse one taken for another model shape."""
        rows = read_profile(path, statistic)
        first = rows[0]
        if arch is None:
            arch = arch_from_profile(first)
        elif check_shape:
            want = {"hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
                    "num_heads": arch.num_heads, "num_kv_heads": arch.num_kv_heads, "vocab_size": arch.vocab_size}
            got = profile_shape(first)
            if got != want:
                raise ValueError(f"profile {path} was taken for shape {got}, but the model is {want}; "
                                 f"re-run `profile` for this model")
        return cls(arch, dtype or str(first.get("dtype")), rows, str(path))

    # ---- per-op costs ------------------------------------------------------------------
    def linear(self, t: int) -> float:
        return sum(f(t) for f in self._linear.values())

    def linear_op(self, op: str, t: int) -> float:
        """One measured linear op (``linear``, or one of :data:`LINEAR_OPS` in older profiles)."""
        return self._linear[op](t)

    def misc(self, t: int) -> float:
        if not self.misc_coef:
            return 0.0
        remainder = sum(c * f for c, f in zip(self.misc_coef, _misc_feats(1, t, self._misc_knee)))
        # The fitted remainder may be negative (the composed ops already over-count a little);
        # it never takes more than half of the linear layers' time away.
        return max(remainder, -0.5 * self.linear(t))

    def attn_prefill(self, chunk: int, cached: int) -> float:
        return self._prefill(chunk, cached)

    def attn_decode(self, ctx: list[int]) -> float:
        # The runtime pads every decode to the longest context of the batch.
        return self.attn_decode_padded(len(ctx), max(ctx))

    def attn_decode_padded(self, batch: int, context: int) -> float:
        """``batch`` decodes, each attending over ``context`` tokens."""
        return self._decode(batch, context)

    def embed(self, t: int) -> float:
        return self._embed(t)

    def lm_head(self, rows: int) -> float:
        return self._lm_head(rows)

    def sample(self, rows: int) -> float:
        return self._sample(rows)

    def overhead(self, parts: int, t: int) -> float:
        return self._overhead(*_overhead_feats(parts, t))

    def p2p(self, nbytes: int) -> float:
        return self._p2p(nbytes) if self._p2p else 0.0

    # ---- transport ---------------------------------------------------------------------
    def link_cost(self, name: str, b: BatchShape) -> float | None:
        """A measured transport interval (``hop``, ``ret``, ``recv``, ``send_first`` ...) for
        ``b``; None when the profile did not measure it."""
        f = self._link.get(name)
        if f is None:
            return None
        return f(1.0, b.num_tokens)

    def hop_time(self, b: BatchShape) -> float:
        t = self.link_cost("hop", b)
        if t is None and "recv" in self._link:  # no waiting stage was seen: posting + taking in
            t = self.link_cost("send_first", b) + self.link_cost("recv", b)
        return super().hop_time(b) if t is None else t

    def return_time(self, b: BatchShape) -> float:
        t = self.link_cost("ret", b)
        return super().return_time(b) if t is None else t

    def send_time(self, b: BatchShape, position: str) -> float:
        t = self.link_cost(f"send_{position}", b)
        if t is None:
            t = self.link_cost("send_first", b)
        return t or 0.0

    def recv_time(self, b: BatchShape) -> float:
        return self.link_cost("recv", b) or 0.0

    def jitter_at(self, seconds: float) -> float:
        """The profile's step-to-step variation for a stage step of ``seconds``: its stage rows'
        jitter as a power law of their duration (within the measured range), else their RMS."""
        if self._jitter_fit is None or seconds <= 0:
            return self.jitter
        icpt, slope, lo, hi = self._jitter_fit
        return min(hi, max(lo, math.exp(icpt + slope * math.log(seconds))))

    @property
    def measured_transport(self) -> bool:
        return "recv" in self._link

    def describe(self) -> dict:
        return {"source": self.source, "profile": self.path, "device": self.device, "dtype": self.dtype,
                "threads": self.threads, "cores": self.cores,
                "misc_per_layer": {"from": self.misc_source, "coef_s": self.misc_coef},
                "jitter": self.jitter,
                "jitter_by_duration": None if self._jitter_fit is None else
                dict(zip(("ln_intercept", "slope", "min", "max"), self._jitter_fit))}
