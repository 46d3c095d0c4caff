"""Cost models: how long a micro-batch (a batch plan) takes on each pipeline stage.

A stage's time is composed from per-operation costs, the same decomposition the runtime
executes (pp_sarathi/model/llama.py):

    per layer:  linear(T)             fused QKV, O, gate/up, down over all T tokens at once
              + misc(T)               norms, rotary, KV writes, activation, residuals, Python
              + sum attn_prefill(c, k)  one per multi-token part (chunk c over k cached tokens)
              + attn_decode(b, ...)     all single-token parts together
              + 2 * allreduce(T*h)     only with tensor parallelism
    stage:      layers * per layer + overhead(parts, T)
              + embed(T) on the first stage + lm_head(L) + sample(L) on the last (L = sampled rows)
    transport:  hop s -> s+1, return to rank 0; with a measured transport also the time a stage
                is busy sending and taking in data that has already arrived

Two sources for the per-op costs:

* :class:`ProfileCosts` - a CSV measured on this device by :func:`pp_sarathi.sim.profile.run_profile`
  under the conditions of a pipeline stage (the stage's own layers, so weights stream from
  memory; co-running stage processes): piecewise-linear interpolation over the token count
  for the linear layers, over the (chunk, cached) and (batch, context) grids for attention,
  least squares for the per-batch overhead (parts, tokens) and for misc(T) = a + b*T per
  layer, fitted to whole measured stage steps (``stage`` rows); the runtime's transport and
  driver loop (``link_*`` rows) as a + b*tokens + c*parts; the step-to-step spread of stage
  steps (``jitter``).
* :class:`RooflineCosts` - FLOPs and bytes of each op against the peak rates in
  :class:`~pp_sarathi.config.HardwareConfig` (max of compute and memory time), with the
  tensor-parallel degree dividing the work and adding ring all-reduces.
"""
from __future__ import annotations

import bisect
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..model.arch import ModelArch
from ..config import HardwareConfig

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2}

# Per-layer kernels outside the linear ops and attention (norms x2, rotary x2, KV writes x2,
# activation, residual adds x2): used for the roofline's launch overhead.
_MISC_KERNELS = 9

PROFILE_COLUMNS = ["op", "tokens", "chunk", "cached", "batch", "context", "bytes", "prefills", "layers", "stage",
                   "jitter", "seconds", "seconds_mean", "seconds_min", "repeats", "device", "dtype", "threads", "hidden_size",
                   "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "cores", "torch"]
LINEAR_OPS = ("linear_qkv", "linear_o", "linear_gate_up", "linear_down")
SHAPE_COLUMNS = ["hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size"]


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


@dataclass
class BatchShape:
    """What a cost model needs to know about one micro-batch."""

    num_tokens: int
    num_parts: int
    prefills: list[tuple[int, int]]  # (chunk tokens, cached tokens) per multi-token part
    decode_ctx: list[int]  # context length (incl. the new token) of each single-token part
    num_sampled: int
    meta_ints: int  # int64 words of the plan metadata on the wire

    @classmethod
    def from_plan(cls, plan, block_size: int = 16) -> "BatchShape":
        """``block_size``: the runtime cache's, to size the block tables sent with the plan."""
        total, prefills, decodes, sampled, meta = 0, [], [], 0, 2
        for p in plan.parts:
            n = len(p.token_ids)
            total += n
            end = p.start + n
            if n == 1:
                decodes.append(end)
            else:
                prefills.append((n, p.start))
            if p.sample:
                sampled += 1
            meta += 7 + -(-end // block_size)
        return cls(total, len(plan.parts), prefills, decodes, sampled, meta)


@dataclass
class StageTimes:
    compute: list[float]  # seconds per stage
    transfer: list[float]  # hop s -> s+1: upstream compute end -> downstream compute start when it waits (len = stages - 1)
    ret: float  # last stage's compute end -> the driver has the sampled tokens (0 when pp = 1)
    send: list[float] = field(default_factory=list)  # per stage: busy posting its output after computing (default 0)
    recv: list[float] = field(default_factory=list)  # per stage: taking in data that is already there (default 0)


class CostModel:
    """Composes per-op costs into per-stage times; subclasses provide the ops."""

    source = "base"
    cores = 0  # CPU cores the stages share (0: every stage has its own device)
    threads = 1
    # Step-to-step variation of a stage's compute time: standard deviation of its logarithm
    # (measured by a profile; 0 = deterministic).
    jitter = 0.0

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

    def layer_time(self, b: BatchShape) -> float:
        c = self.token_bound(b.num_tokens)
        for chunk, cached in b.prefills:
            c += self.attn_prefill(chunk, cached)
        if b.decode_ctx:
            c += self.attn_decode(b.decode_ctx)
        return c

    def activation_bytes(self, b: BatchShape) -> int:
        return b.num_tokens * self.arch.hidden_size * self.elt

    def hop_time(self, b: BatchShape) -> float:
        """Header + plan metadata + hidden states, as three messages (runtime/transport.py)."""
        return self.p2p(24) + self.p2p(8 * b.meta_ints) + self.p2p(self.activation_bytes(b))

    def return_time(self, b: BatchShape) -> float:
        return self.p2p(16) + self.p2p(8 * b.num_parts)

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
        per_layer = self.layer_time(b)
        over = self.overhead(b.num_parts, b.num_tokens)
        compute = [n * per_layer + over for n in layers]
        compute[0] += self.embed(b.num_tokens)
        if b.num_sampled:
            compute[-1] += self.lm_head(b.num_sampled) + self.sample(b.num_sampled)
        n = len(layers)
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


# =====================================================================================
# Roofline
# =====================================================================================


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
        return self._roof(0.0, elems * e, _MISC_KERNELS)

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
        from dataclasses import asdict
        return {"source": self.source, "dtype": self.dtype, "hardware": asdict(self.hw)}


# =====================================================================================
# Profile (measured on a device)
# =====================================================================================


class Interp1D:
    """Piecewise-linear interpolation on sorted points. Below the first point: the first
    segment's line; beyond the last: the last point plus the least-squares slope of the points
    in the upper half of the range (one noisy end point does not set the slope of everything
    beyond it)."""

    def __init__(self, xs, ys):
        pts = sorted(zip(map(float, xs), map(float, ys)))
        # Average duplicates.
        merged: dict[float, list[float]] = {}
        for x, y in pts:
            merged.setdefault(x, []).append(y)
        self.xs = sorted(merged)
        self.ys = [float(np.median(merged[x])) for x in self.xs]
        if not self.xs:
            raise ValueError("no points to interpolate")
        self.tail_slope = None
        if len(self.xs) >= 2:
            upper = [(x, y) for x, y in zip(self.xs, self.ys) if x >= self.xs[-1] / 2]
            if len(upper) >= 3:
                ux, uy = np.asarray(upper).T
                self.tail_slope = float(np.polyfit(ux, uy, 1)[0])
            else:
                self.tail_slope = (self.ys[-1] - self.ys[-2]) / (self.xs[-1] - self.xs[-2])

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            return ys[0]
        if x > xs[-1]:
            return max(ys[-1] + self.tail_slope * (x - xs[-1]), 0.0)
        i = bisect.bisect_right(xs, x)
        i = min(max(i, 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return max(y, 0.0)


class Interp2D:
    """Bilinear-style interpolation on a grid of rows: piecewise-linear along ``y`` within each
    measured ``x`` row, then linear between the two rows bracketing ``x`` (linear extrapolation
    beyond the grid in both directions)."""

    def __init__(self, xs, ys, zs):
        rows: dict[float, tuple[list, list]] = {}
        for x, y, z in zip(xs, ys, zs):
            r = rows.setdefault(float(x), ([], []))
            r[0].append(y)
            r[1].append(z)
        if not rows:
            raise ValueError("no points to interpolate")
        self.xs = sorted(rows)
        self.rows = [Interp1D(*rows[x]) for x in self.xs]

    def __call__(self, x: float, y: float) -> float:
        xs = self.xs
        if len(xs) == 1:
            return self.rows[0](y)
        i = min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)
        x0, x1 = xs[i - 1], xs[i]
        a, b = self.rows[i - 1](y), self.rows[i](y)
        return max(0.0, a + (b - a) * (x - x0) / (x1 - x0))


class LinearFit:
    """Least squares ``y ~ features(x) . w`` (non-negative predictions)."""

    def __init__(self, feats, ys, names: list[str]):
        a = np.asarray(feats, dtype=np.float64)
        y = np.asarray(ys, dtype=np.float64)
        if len(y) == 0:
            raise ValueError("no points to fit")
        # Relative least squares: weight rows by 1/y so small shapes matter as much as big ones.
        w = 1.0 / np.maximum(y, 1e-9)
        coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
        self.coef = [float(c) for c in coef]
        self.names = names

    def __call__(self, *features: float) -> float:
        return max(0.0, sum(c * f for c, f in zip(self.coef, features)))


# From this many tokens on, a GEMM's time grows linearly with its rows on every device we
# profiled; the largest counts are timed in few calls, so their noise is averaged out by a line.
LINEAR_FROM_TOKENS = 256


def _straighten(xs, ys, start: int = LINEAR_FROM_TOKENS) -> tuple[list, list]:
    """Points at ``x >= start`` replaced by a least-squares line through them (relative
    weights), when there are at least three; smaller ``x`` are kept as measured."""
    big = [(x, y) for x, y in zip(xs, ys) if x >= start]
    if len({x for x, _ in big}) < 3:
        return list(xs), list(ys)
    a, b = _weighted_lstsq([[1.0, x] for x, _ in big], [y for _, y in big], [1.0 / max(y, 1e-12) for _, y in big])
    return list(xs), [y if x < start else max(a + b * x, 1e-12) for x, y in zip(xs, ys)]


MISC_KNEE_TOKENS = 1024


def _misc_feats(layers: int, tokens: int, knee: int | None) -> list[float]:
    f = [layers, layers * tokens]
    return f + [layers * max(0, tokens - knee)] if knee else f


def _overhead_feats(parts, tokens):
    return [1.0, parts, tokens]


def read_profile(path: str | Path, statistic: str = "median") -> list[dict]:
    """Rows of a profile CSV. ``seconds`` is each point's ``median`` timed call (the default),
    or with ``statistic="mean"`` / ``"min"`` the mean (``seconds_mean``) / fastest call
    (``seconds_min``). Profiles written before ``seconds_mean`` existed stored the mean in
    ``seconds``."""
    if statistic not in ("median", "mean", "min"):
        raise ValueError(f"profile statistic must be median, mean or min, not {statistic!r}")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for k in ("tokens", "chunk", "cached", "batch", "context", "bytes", "prefills", "layers", "repeats", "threads",
                      "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                      "cores"):
                r[k] = int(float(r[k])) if r.get(k) not in (None, "") else 0
            r["stage"] = r.get("stage") or ""
            r["seconds"] = float(r["seconds"])
            r["jitter"] = float(r["jitter"]) if r.get("jitter") not in (None, "") else 0.0
            for k in ("seconds_min", "seconds_mean"):
                r[k] = float(r[k]) if r.get(k) not in (None, "") else r["seconds"]
            rows.append(r)
    if not rows:
        raise ValueError(f"profile {path} has no rows")
    if statistic != "median":
        for r in rows:
            r["seconds"] = r["seconds_min" if statistic == "min" else "seconds_mean"]
    return rows


def write_profile(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROFILE_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in PROFILE_COLUMNS})
    return path


class ProfileCosts(CostModel):
    """Per-op costs from a profile CSV (one device, one model shape, one dtype)."""

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
            self._linear = {"linear": Interp1D(*_straighten([r["tokens"] for r in rs], [r["seconds"] for r in rs]))}
        else:  # older profiles: the four ops timed one by one
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
        # The runtime's own transport and driver loop (link_* rows, measured between stage
        # processes that compute meanwhile): heavy-tailed, so their mean is used.
        # a + b*tokens (the hidden states grow with the tokens); a constant when the fitted
        # slope is negative (the shape dependence drowns in the spread).
        self._link = {}
        for op, rs in by.items():
            if op.startswith("link_") and rs:
                ys = [r["seconds_mean"] for r in rs]
                fit = LinearFit([[1.0, r["tokens"]] for r in rs], ys, ["const", "tokens"]) \
                    if len({r["tokens"] for r in rs}) >= 3 else None
                if fit is None or fit.coef[1] < 0:
                    fit = LinearFit([[1.0, 0.0] for _ in rs], ys, ["const", "tokens"])
                self._link[op[5:]] = fit
        # misc(T) = a + b*T per layer: what whole measured stage steps (or, in older profiles,
        # whole decoder layers) cost beyond the composed linear, attention, overhead and
        # embedding / LM head / sampling ops; fitted by least squares relative to the step time.
        self._misc = None
        self._misc_knee: int | None = None  # tokens where the remainder's second slope starts (None: one slope)
        self.misc_source = None
        if by.get("stage"):
            feats, ys, ws = [], [], []
            # A second slope above MISC_KNEE_TOKENS when the stage sweep has enough steps there
            # (whole-prompt micro-batches): what the composed ops miss or over-count grows
            # differently for thousands of tokens than for a chunk.
            big = sum(r["chunk"] * max(1, r["prefills"]) + r["batch"] > MISC_KNEE_TOKENS for r in by["stage"])
            self._misc_knee = MISC_KNEE_TOKENS if big >= 3 else None
            for r in by["stage"]:
                b, n = _stage_shape(r), max(1, r["layers"])
                rest = self._stage_without_misc(b, n, r["stage"])
                feats.append(_misc_feats(n, b.num_tokens, self._misc_knee))
                ys.append(r["seconds"] - rest)
                ws.append(1.0 / max(r["seconds"], 1e-9))
            self._misc = _weighted_lstsq(feats, ys, ws)
            self.misc_source = "stage"
            js = [r["jitter"] for r in by["stage"] if r["jitter"] > 0]
            self.jitter = float(np.sqrt(np.mean(np.square(js)))) if js else 0.0
        elif by.get("layer"):
            xs, ys = [], []
            for r in by["layer"]:
                b = _layer_shape(r)
                rest = self.linear(b.num_tokens) + self._attn(b)
                xs.append([1.0, b.num_tokens])
                ys.append(max(r["seconds"] - rest, 1e-7))
            self._misc = LinearFit(xs, ys, ["const", "tokens"]).coef
            self.misc_source = "layer"

    def _stage_without_misc(self, b: BatchShape, layers: int, kind: str) -> float:
        t = layers * (self.linear(b.num_tokens) + self._attn(b)) + self.overhead(b.num_parts, b.num_tokens)
        if kind in ("first", "only"):
            t += self.embed(b.num_tokens)
        if kind in ("last", "only") and b.num_sampled:
            t += self.lm_head(b.num_sampled) + self.sample(b.num_sampled)
        return t

    def stage_step(self, b: BatchShape, layers: int, kind: str) -> float:
        """A whole stage step as :meth:`stage_times` composes it (``kind``: first, middle, last, only)."""
        return self._stage_without_misc(b, layers, kind) + layers * self.misc(b.num_tokens)

    def _attn(self, b: BatchShape) -> float:
        c = sum(self.attn_prefill(ch, ca) for ch, ca in b.prefills)
        if b.decode_ctx:
            c += self.attn_decode(b.decode_ctx)
        return c

    @classmethod
    def from_csv(cls, path: str | Path, arch: ModelArch | None = None, dtype: str | None = None,
                 check_shape: bool = True, statistic: str = "median") -> "ProfileCosts":
        rows = read_profile(path, statistic)
        first = rows[0]
        if arch is None:
            arch = arch_from_profile(first)
        elif check_shape:
            want = {"hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
                    "num_heads": arch.num_heads, "num_kv_heads": arch.num_kv_heads, "vocab_size": arch.vocab_size}
            got = {k: first.get(k) for k in want}
            if got != want:
                raise ValueError(f"profile {path} was taken for shape {got}, but the model is {want}; "
                                 f"re-run `profile` for this model")
        return cls(arch, dtype or str(first.get("dtype")), rows, str(path))

    def linear(self, t: int) -> float:
        return sum(f(t) for f in self._linear.values())

    def misc(self, t: int) -> float:
        if not self._misc:
            return 0.0
        remainder = sum(c * f for c, f in zip(self._misc, _misc_feats(1, t, self._misc_knee)))
        # The fitted remainder may be negative (the composed ops already over-count a little);
        # it never takes more than half of the linear layers' time away.
        return max(remainder, -0.5 * self.linear(t))

    def attn_prefill(self, chunk: int, cached: int) -> float:
        return self._prefill(chunk, cached)

    def attn_decode(self, ctx: list[int]) -> float:
        # The runtime pads every decode to the longest context of the batch.
        return self._decode(len(ctx), max(ctx))

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

    def _link_cost(self, name: str, b: BatchShape) -> float | None:
        f = self._link.get(name)
        if f is None:
            return None
        return f(1.0, b.num_tokens)

    def hop_time(self, b: BatchShape) -> float:
        t = self._link_cost("hop", b)
        if t is None and "recv" in self._link:  # no waiting stage was seen: posting + taking in
            t = self._link_cost("send_first", b) + self._link_cost("recv", b)
        return super().hop_time(b) if t is None else t

    def return_time(self, b: BatchShape) -> float:
        t = self._link_cost("ret", b)
        return super().return_time(b) if t is None else t

    def send_time(self, b: BatchShape, position: str) -> float:
        t = self._link_cost(f"send_{position}", b)
        if t is None:
            t = self._link_cost("send_first", b)
        return t or 0.0

    def recv_time(self, b: BatchShape) -> float:
        return self._link_cost("recv", b) or 0.0

    @property
    def measured_transport(self) -> bool:
        return "recv" in self._link

    def describe(self) -> dict:
        return {"source": self.source, "profile": self.path, "device": self.device, "dtype": self.dtype,
                "threads": self.threads, "cores": self.cores,
                "misc_per_layer": {"from": self.misc_source, "coef_s": self._misc},
                "jitter": self.jitter}


def _weighted_lstsq(feats, ys, ws) -> list[float]:
    a = np.asarray(feats, dtype=np.float64)
    w = np.asarray(ws, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a * w[:, None], np.asarray(ys, dtype=np.float64) * w, rcond=None)
    return [float(c) for c in coef]


def _stage_shape(r: dict) -> BatchShape:
    """A ``stage`` profile row: ``prefills`` chunks (chunk over cached) plus ``batch`` decodes at
    ``context``; every part samples (as a micro-batch of final chunks and decodes)."""
    n_pre = (r.get("prefills") or 1) if r["chunk"] else 0
    prefills = [(r["chunk"], r["cached"])] * n_pre
    decodes = [r["context"]] * r["batch"]
    parts = n_pre + r["batch"]
    return BatchShape(r["chunk"] * n_pre + r["batch"], parts, prefills, decodes, parts, 0)


def _layer_shape(r: dict) -> BatchShape:
    """A ``layer`` profile row: one prefill chunk (chunk, cached) plus ``batch`` decodes at ``context``."""
    prefills = [(r["chunk"], r["cached"])] if r["chunk"] else []
    decodes = [r["context"]] * r["batch"]
    return BatchShape(r["chunk"] + r["batch"], len(prefills) + len(decodes), prefills, decodes, 0, 0)


def arch_from_profile(r: dict) -> ModelArch:
    return ModelArch(family="llama", vocab_size=r["vocab_size"], hidden_size=r["hidden_size"],
                     intermediate_size=r["intermediate_size"], num_layers=1, num_heads=r["num_heads"],
                     num_kv_heads=r["num_kv_heads"], head_dim=r["head_dim"], max_position_embeddings=1 << 20,
                     rms_norm_eps=1e-5, rope_theta=10000.0)


# =====================================================================================
# Held-out error of the profile model
# =====================================================================================


def _pred_row(m: ProfileCosts, r: dict) -> float | None:
    op = r["op"]
    if op == "linear" or op in LINEAR_OPS:
        return m._linear[op](r["tokens"])
    if op == "attn_prefill":
        return m.attn_prefill(r["chunk"], r["cached"])
    if op == "attn_decode":
        return m._decode(r["batch"], r["context"])
    if op == "embed":
        return m.embed(r["tokens"])
    if op == "lm_head":
        return m.lm_head(r["tokens"])
    if op == "sample":
        return m.sample(r["tokens"])
    if op == "overhead":
        return m.overhead(r["batch"], r["tokens"])
    if op == "p2p":
        return m.p2p(r["bytes"])
    if op.startswith("link_"):
        return m._link_cost(op[5:], BatchShape(r["tokens"], r["batch"], [], [], r["batch"], 0))
    if op == "layer":
        b = _layer_shape(r)
        return m.linear(b.num_tokens) + m.misc(b.num_tokens) + m._attn(b)
    if op == "stage":
        return m.stage_step(_stage_shape(r), max(1, r["layers"]), r["stage"])
    return None


def holdout_errors(path_or_rows, arch: ModelArch | None = None, every: int = 3, statistic: str = "median") -> dict:
    """Fit on all profile rows but every ``every``-th one of each op (interior points for the
    interpolated ops), predict the held-out rows, and report relative errors per op.

    ``layer`` rows (whole decoder layers on mixed batches) check the additive composition:
    half of them fit misc(T), the other half are held out.
    """
    rows = read_profile(path_or_rows, statistic) if isinstance(path_or_rows, (str, Path)) else list(path_or_rows)
    arch = arch or arch_from_profile(rows[0])
    held: set[int] = set()
    by_op: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_op.setdefault(r["op"], []).append(i)
    grid2d = {"attn_prefill": ("chunk", "cached"), "attn_decode": ("batch", "context")}
    for op, idx in by_op.items():
        if op in grid2d:  # interior points of the (x, y) grid
            kx, ky = grid2d[op]
            xs = sorted({rows[i][kx] for i in idx})
            inner = []
            for i in idx:
                ys = sorted(rows[j][ky] for j in idx if rows[j][kx] == rows[i][kx])
                if rows[i][kx] not in (xs[0], xs[-1]) and rows[i][ky] not in (ys[0], ys[-1]):
                    inner.append(i)
            cand = inner[::every]
        elif op in ("overhead", "layer", "stage") or op.startswith("link_"):
            cand = idx[1::2] if op in ("layer", "stage") else idx[1::every]
        else:  # interpolated in one dimension: interior points only (no extrapolation test)
            key = "bytes" if op == "p2p" else "tokens"
            order = sorted(idx, key=lambda i: rows[i][key])
            cand = order[1:-1][::every]
        held.update(cand)
    model = ProfileCosts(arch, str(rows[0].get("dtype")), rows, exclude=held)
    out: dict[str, dict] = {}
    errs: dict[str, list[float]] = {}
    for i in sorted(held):
        r = rows[i]
        pred = _pred_row(model, r)
        if pred is None or r["seconds"] <= 0:
            continue
        errs.setdefault(r["op"], []).append((pred - r["seconds"]) / r["seconds"])
    for op, e in sorted(errs.items()):
        a = np.abs(np.asarray(e))
        out[op] = {"held_out": len(e), "mean_abs_rel_err": float(a.mean()), "max_abs_rel_err": float(a.max()),
                   "median_abs_rel_err": float(np.median(a))}
    all_e = np.abs(np.concatenate([np.asarray(v) for v in errs.values()])) if errs else np.zeros(0)
    out["all"] = {"held_out": int(all_e.size), "mean_abs_rel_err": float(all_e.mean()) if all_e.size else None,
                  "max_abs_rel_err": float(all_e.max()) if all_e.size else None,
                  "median_abs_rel_err": float(np.median(all_e)) if all_e.size else None}
    return out


# =====================================================================================
# Factory
# =====================================================================================


def make_cost_model(cfg, arch: ModelArch) -> CostModel:
    """Profile CSV when ``sim.profile`` is set, else the ``hardware`` roofline."""
    if cfg.sim.profile:
        if cfg.hardware.tp > 1:
            raise ValueError("a profile measures one device without tensor parallelism; "
                             "unset sim.profile (roofline) or set hardware.tp=1")
        return ProfileCosts.from_csv(cfg.sim.profile, arch, cfg.model.dtype, statistic=cfg.sim.profile_statistic)
    return RooflineCosts(arch, cfg.model.dtype, cfg.hardware)


def kv_capacity_tokens(arch: ModelArch, hw: HardwareConfig, layers: int, dtype: str,
                       utilisation: float = 0.9) -> int:
    """KV tokens one stage can hold: (memory - stage weights) / per-token KV bytes (paper's B rule)."""
    e = dtype_bytes(dtype)
    a = arch
    per_layer = a.hidden_size * (a.q_size + 2 * a.kv_size) + a.q_size * a.hidden_size + 3 * a.hidden_size * a.intermediate_size
    weights = layers * per_layer * e / hw.tp + 2 * a.vocab_size * a.hidden_size * e / hw.tp / 2
    kv_per_token = 2 * layers * a.kv_size * e / max(1, min(hw.tp, a.num_kv_heads))
    free = hw.memory_gb * 1e9 * utilisation - weights
    return max(0, int(free // kv_per_token))

