"""The probed predictor: cost terms fitted to a few whole stage steps timed on this device,
then refitted online to the micro-batches the run computes.

A run's rank 0 holds stage 0's real layers; it times a handful of synthetic batch shapes
(:data:`PROBE_SHAPES`) through them at start-up (:mod:`pp_sarathi.runtime.calibrate`) and fits,
by one relative least squares, a stage step as

    step = layers * (w + a * T + b * sum_prefill c * (k + (c + 1) / 2) + d * sum_decode ctx)
           + o * parts

(``w``: streaming one layer's weights; ``a``: the linear layers per token; ``b``: attention per
query-key pair of a prefill chunk ``c`` over ``k`` cached tokens; ``d``: per decode key read;
``o``: per-part work). Other stages scale by their layer count; the last stage adds the LM head
at the linear layers' per-weight rate. The fit is kept as a small dict, cached on disk by the
runtime per model, dtype, device and threads.

A probe on an idle device misses what the run adds (the other stages sharing the memory
system, a KV cache larger than the CPU's caches, ...), and not uniformly across the terms, so
:meth:`ProbedCosts.refit` fits the same terms again to the run's own measured micro-batches,
anchored to the probe's shape of the cost surface where the run's batches say nothing.
"""
from __future__ import annotations

import statistics

from ..model.arch import ModelArch
from ..model.shapes import embedding_params, linear_params_per_layer
from .fit import weighted_lstsq, relative_weights
from .predictor import CostModel
from .shape import BatchShape

COEF_NAMES = ("weights", "per_token", "per_pair", "per_decode_key", "per_part")

# (prefill chunks (tokens, cached), decode contexts) at a 1024-token context; scaled down for
# models with a shorter one. Spread over tokens, attention pairs, decode keys and part counts.
PROBE_SHAPES: list[tuple[list[tuple[int, int]], list[int]]] = [
    ([(32, 0)], []),
    ([(128, 0)], []),
    ([(256, 0)], []),
    ([(128, 384)], []),
    ([(64, 0), (64, 64)], []),
    ([], [256] * 4),
    ([], [512] * 16),
    ([(96, 128)], [300] * 12),
]
# Every probe shape counts as much as this many observed micro-batches in a refit.
ANCHOR_WEIGHT = 1.0


def probe_shapes(max_len: int | None) -> list[tuple[list[tuple[int, int]], list[int]]]:
    """:data:`PROBE_SHAPES` scaled to a model whose context is ``max_len`` tokens (None: as
    they are)."""
    f = 1.0 if max_len is None else min(1.0, (max_len - 1) / 1024.0)

    def sc(x: int) -> int:
        return max(1, int(x * f))
    return [([(max(2, sc(c)), sc(k) if k else 0) for c, k in pre], [max(2, sc(x)) for x in dec])
            for pre, dec in PROBE_SHAPES]


def prefill_pairs(prefills: list[tuple[int, int]]) -> float:
    """Query-key pairs of the prefill chunks ``(c, k)``: cached keys plus the causal half."""
    return float(sum(c * (k + (c + 1) / 2.0) for c, k in prefills))


def step_features(shape: BatchShape, layers: int) -> list[float]:
    """The fitted step's features for ``shape`` on a stage of ``layers`` layers."""
    return [layers, layers * shape.num_tokens, layers * prefill_pairs(shape.prefills),
            layers * sum(shape.decode_ctx), shape.num_parts]


def fit_nonnegative(feats: list[list[float]], ys: list[float], ws: list[float]) -> list[float]:
    """Weighted least squares whose negative (non-physical) terms are dropped and the rest
    refitted; one coefficient per feature column."""
    n = len(feats[0])
    keep = list(range(n))
    for _ in range(n):
        sol = weighted_lstsq([[f[i] for i in keep] for f in feats], ys, ws)
        bad = [i for i, c in zip(keep, sol) if c < 0]
        if not bad:
            coef = [0.0] * n
            for i, c in zip(keep, sol):
                coef[i] = c
            return coef
        keep = [i for i in keep if i not in bad]
    return [0.0] * n


class ProbedCosts(CostModel):
    """Per-op costs from coefficients fitted to probed stage steps (see the module doc)."""

    source = "probe"

    def __init__(self, arch: ModelArch, dtype: str, coef: dict[str, float], info: dict | None = None):
        super().__init__(arch, dtype)
        self.coef = {k: max(0.0, float(coef.get(k, 0.0))) for k in COEF_NAMES}
        self.info = dict(info or {})
        self.prior: ProbedCosts | None = None  # the probe's fit, when this one is a refit
        # The LM head is one more GEMM at the linear layers' rate per weight.
        self._head_ratio = embedding_params(arch) / linear_params_per_layer(arch) if arch is not None else 0.0
        self._units: list[ProbedCosts] | None = None  # one model per coefficient set to 1 (features)

    @classmethod
    def fit(cls, arch: ModelArch, dtype: str, rows: list[tuple[BatchShape, int, float]],
            info: dict | None = None) -> "ProbedCosts":
        """Fit to ``rows`` of (shape, layers, measured step seconds) of a first, not last, stage."""
        if not rows:
            raise ValueError("no probed steps to fit")
        ys = [y for _, _, y in rows]
        coef = fit_nonnegative([step_features(s, n) for s, n, _ in rows], ys, relative_weights(ys))
        model = cls(arch, dtype, dict(zip(COEF_NAMES, coef)), info)
        errs = [abs(model.step(s, n) / y - 1) for s, n, y in rows if y > 0]
        model.info["fit_error_max"] = max(errs) if errs else None
        return model

    def features(self, shape: BatchShape, layers: int, last: bool = False) -> list[float]:
        """:func:`step_features` plus, with ``last`` (a single-stage pipeline), the LM head over
        the sampled rows less what the model's last layer skips (linear in the coefficients
        like the rest: each feature is that saving with its coefficient alone set to 1)."""
        f = step_features(shape, layers)
        if last and shape.num_sampled:
            f[0] += self._head_ratio
            f[1] += self._head_ratio * shape.num_sampled
        if last and layers and shape.num_sampled < shape.num_tokens:
            if self._units is None:
                self._units = [ProbedCosts(self.arch, self.dtype, {k: 1.0}) for k in COEF_NAMES]
            f = [x - u.last_layer_saving(shape) for x, u in zip(f, self._units)]
        return f

    def step(self, shape: BatchShape, layers: int, last: bool = False) -> float:
        """The fitted step time of ``shape`` on a first stage of ``layers`` layers."""
        c = self.coef
        return sum(w * f for w, f in zip((c[k] for k in COEF_NAMES), self.features(shape, layers, last)))

    def refit(self, observed: list[tuple[BatchShape, float]], layers: int, last: bool = False) -> "ProbedCosts":
        """These terms fitted again to a run's measured micro-batches ``(shape, seconds)`` on a
        first stage of ``layers`` layers (``last``: a single-stage pipeline).

        The probe's shapes join the fit as anchors, each weighing :data:`ANCHOR_WEIGHT`
        observations, at the probe model's prediction times the median measured ÷ predicted
        ratio of the observations: where the run's micro-batches all look alike (a term they
        cannot tell apart from another), the probe's shape of the cost surface decides, at the
        level the run measures."""
        prior = self.prior or self
        pairs = [(s, y) for s, y in observed if y > 0]
        if not pairs:
            return self
        level = statistics.median(y / max(prior.step(s, layers, last), 1e-12) for s, y in pairs)
        feats = [prior.features(s, layers, last) for s, _ in pairs]
        ys = [y for _, y in pairs]
        ws = relative_weights(ys)
        for prefills, decodes in probe_shapes(self.arch.max_position_embeddings if self.arch else None):
            shape = BatchShape.of(prefills, decodes, 0)
            y = level * prior.step(shape, layers, last)
            feats.append(prior.features(shape, layers, last))
            ys.append(y)
            ws.append(ANCHOR_WEIGHT ** 0.5 / max(y, 1e-12))
        coef = fit_nonnegative(feats, ys, ws)
        model = ProbedCosts(self.arch, self.dtype, dict(zip(COEF_NAMES, coef)),
                            {**prior.info, "refits": self.info.get("refits", 0) + 1,
                             "refit_observations": len(pairs), "probe_coef_s": dict(prior.coef)})
        model.prior = prior
        return model

    # ---- per-op costs ------------------------------------------------------------------
    def linear(self, t: int) -> float:
        return self.coef["weights"] + self.coef["per_token"] * t

    def misc(self, t: int) -> float:
        return 0.0

    def attn_prefill(self, chunk: int, cached: int) -> float:
        return self.coef["per_pair"] * chunk * (cached + (chunk + 1) / 2.0)

    def attn_decode(self, ctx: list[int]) -> float:
        return self.coef["per_decode_key"] * sum(ctx)

    def embed(self, t: int) -> float:
        return 0.0

    def lm_head(self, rows: int) -> float:
        return self._head_ratio * (self.coef["weights"] + self.coef["per_token"] * rows)

    def sample(self, rows: int) -> float:
        return 0.0

    def overhead(self, parts: int, t: int) -> float:
        return self.coef["per_part"] * parts

    def p2p(self, nbytes: int) -> float:
        return 0.0

    def to_dict(self) -> dict:
        return {"coef": dict(self.coef), "dtype": self.dtype, "info": self.info}

    def describe(self) -> dict:
        return {"source": self.source, "dtype": self.dtype, "coef_s": dict(self.coef), **self.info}
