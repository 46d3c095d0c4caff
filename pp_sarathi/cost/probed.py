"""The probed predictor: cost terms fitted to a few whole stage steps timed on this device.

A run's rank 0 holds stage 0's real layers; it times a handful of synthetic batch shapes
through them at start-up (:mod:`pp_sarathi.runtime.calibrate`) and fits, by one relative
least squares, a stage step as

    step = layers * (w + a * T + b * sum_prefill c * (k + (c + 1) / 2) + d * decodes * longest ctx)
           + o * parts

(``w``: streaming one layer's weights; ``a``: the linear layers per token; ``b``: attention per
query-key pair of a prefill chunk ``c`` over ``k`` cached tokens; ``d``: per padded decode key;
``o``: per-part metadata work). Other stages scale by their layer count; the last stage adds
the LM head at the linear layers' per-weight rate. The fit is kept as a small dict, cached on
disk by the runtime per model, dtype, device and threads.
"""
from __future__ import annotations

from ..model.arch import ModelArch
from ..model.shapes import embedding_params, linear_params_per_layer
from .fit import weighted_lstsq, relative_weights
from .predictor import CostModel
from .shape import BatchShape

COEF_NAMES = ("weights", "per_token", "per_pair", "per_decode_key", "per_part")


def prefill_pairs(prefills: list[tuple[int, int]]) -> float:
    """Query-key pairs of the prefill chunks ``(c, k)``: cached keys plus the causal half."""
    return float(sum(c * (k + (c + 1) / 2.0) for c, k in prefills))


def step_features(shape: BatchShape, layers: int) -> list[float]:
    """The fitted step's features for ``shape`` on a stage of ``layers`` layers."""
    dec = len(shape.decode_ctx) * max(shape.decode_ctx) if shape.decode_ctx else 0
    return [layers, layers * shape.num_tokens, layers * prefill_pairs(shape.prefills), layers * dec,
            shape.num_parts]


class ProbedCosts(CostModel):
    """Per-op costs from coefficients fitted to probed stage steps (see the module doc)."""

    source = "probe"

    def __init__(self, arch: ModelArch, dtype: str, coef: dict[str, float], info: dict | None = None):
        super().__init__(arch, dtype)
        self.coef = {k: max(0.0, float(coef.get(k, 0.0))) for k in COEF_NAMES}
        self.info = dict(info or {})
        # The LM head is one more GEMM at the linear layers' rate per weight.
        self._head_ratio = embedding_params(arch) / linear_params_per_layer(arch) if arch is not None else 0.0

    @classmethod
    def fit(cls, arch: ModelArch, dtype: str, rows: list[tuple[BatchShape, int, float]],
            info: dict | None = None) -> "ProbedCosts":
        """Fit to ``rows`` of (shape, layers, measured step seconds); non-physical negative
        terms are dropped and the rest refitted."""
        if not rows:
            raise ValueError("no probed steps to fit")
        keep = list(range(len(COEF_NAMES)))
        feats = [step_features(s, n) for s, n, _ in rows]
        ys = [y for _, _, y in rows]
        ws = relative_weights(ys)
        coef = [0.0] * len(COEF_NAMES)
        for _ in range(len(COEF_NAMES)):
            sol = weighted_lstsq([[f[i] for i in keep] for f in feats], ys, ws)
            bad = [i for i, c in zip(keep, sol) if c < 0]
            if not bad:
                coef = [0.0] * len(COEF_NAMES)
                for i, c in zip(keep, sol):
                    coef[i] = c
                break
            keep = [i for i in keep if i not in bad]
        model = cls(arch, dtype, dict(zip(COEF_NAMES, coef)), info)
        errs = [abs(model.step(s, n) / y - 1) for s, n, y in rows if y > 0]
        model.info["fit_error_max"] = max(errs) if errs else None
        return model

    def step(self, shape: BatchShape, layers: int) -> float:
        """The fitted step time of ``shape`` on a (first, not last) stage of ``layers`` layers."""
        c = self.coef
        return sum(w * f for w, f in zip((c[k] for k in COEF_NAMES), step_features(shape, layers)))

    # ---- per-op costs ------------------------------------------------------------------
    def linear(self, t: int) -> float:
        return self.coef["weights"] + self.coef["per_token"] * t

    def misc(self, t: int) -> float:
        return 0.0

    def attn_prefill(self, chunk: int, cached: int) -> float:
        return self.coef["per_pair"] * chunk * (cached + (chunk + 1) / 2.0)

    def attn_decode(self, ctx: list[int]) -> float:
        # The runtime pads every decode to the longest context of the batch.
        return self.coef["per_decode_key"] * len(ctx) * max(ctx)

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
