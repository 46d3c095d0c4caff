"""Predicted stage times of a batch plan on a given pipeline split (what a scheduler asks).

A scheduler does not know about layer counts, first/last stages or :class:`BatchShape`; it
asks :class:`PlanCost` in its own terms: the prefill chunks ``(tokens, cached)`` and the
decode contexts of a candidate micro-batch. Everything here is plain Python over ints and
floats: a planner asks for several candidates per micro-batch.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable

from .predictor import CostModel, StageTimePredictor
from .shape import BatchShape


class PlanCost:
    """Stage times of candidate micro-batches on a pipeline whose stages hold ``layers[s]``
    decoder layers (stage 0 also embeds, the last stage also runs the LM head and sampler).

    ``cost``: any :class:`StageTimePredictor`; a :class:`CostModel` is composed per layer once
    per candidate instead of once per stage.

    ``scale`` multiplies every prediction; :meth:`observe` moves it towards the measured ÷
    predicted ratio of the micro-batches a run computes (online refinement: a calibration
    taken on an idle device also fits a device shared with the other stages). A cost model
    that can refit itself (``refit(observed, layers, last)``, the probed one) is also refitted
    to the last :attr:`REFIT_WINDOW` observed micro-batches every :attr:`REFIT_EVERY` of them:
    the terms a busy device slows down are not all slowed alike.
    """

    # Weight of each new observation in the running mean of log(measured / predicted).
    REFINE_WEIGHT = 0.05
    REFIT_EVERY = 32
    REFIT_WINDOW = 256

    def __init__(self, cost: StageTimePredictor, layers: list[int]):
        if not layers or min(layers) < 1:
            raise ValueError(f"every stage needs at least one layer, got {layers}")
        self.cost = cost
        self.layers = list(layers)
        self._composed = isinstance(cost, CostModel)
        self.scale = 1.0
        self._log_scale = 0.0
        self.observations = 0
        self.refits = 0
        self._seen: deque[tuple[BatchShape, float]] = deque(maxlen=self.REFIT_WINDOW)

    def observe(self, predicted_s: float, measured_s: float, prefills: list[tuple[int, int]] | None = None,
                decode_ctx: list[int] | None = None, num_sampled: int | None = None) -> None:
        """A micro-batch predicted at ``predicted_s`` (with the current scale) took
        ``measured_s`` on the first stage: refine :attr:`scale`; given the micro-batch's shape
        (``prefills``, ``decode_ctx``, ``num_sampled`` as in :meth:`stage_seconds`), refit the
        cost model every :attr:`REFIT_EVERY` observations where it can be."""
        if predicted_s <= 0 or measured_s <= 0:
            return
        raw = math.log(measured_s / (predicted_s / self.scale))
        w = max(self.REFINE_WEIGHT, 1.0 / (self.observations + 1))
        self._log_scale += w * (raw - self._log_scale)
        self.observations += 1
        self.scale = math.exp(self._log_scale)
        refit = getattr(self.cost, "refit", None)
        if prefills is None or refit is None:
            return
        self._seen.append((BatchShape.of(prefills, decode_ctx or [], num_sampled), measured_s))
        if len(self._seen) >= self.REFIT_EVERY and self.observations % self.REFIT_EVERY == 0:
            # One attribute swap: a scheduler on another thread sees the old model or the new.
            self.cost = refit(list(self._seen), self.layers[0], len(self.layers) == 1)
            self.refits += 1
            self._log_scale, self.scale = 0.0, 1.0

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    def stage_seconds(self, prefills: list[tuple[int, int]], decode_ctx: list[int],
                      num_sampled: int | None = None) -> list[float]:
        """Predicted compute seconds of the micro-batch on every stage."""
        shape = BatchShape.of(prefills, decode_ctx, num_sampled)
        n = len(self.layers)
        if self._composed:
            c: CostModel = self.cost
            per_layer = c.layer_time(shape)
            over = c.overhead(shape.num_parts, shape.num_tokens)
            return [self.scale * c._stage(shape, k, per_layer, over, s == 0, s == n - 1)
                    for s, k in enumerate(self.layers)]
        return [self.scale * self.cost.stage_seconds(shape, k, s == 0, s == n - 1) for s, k in enumerate(self.layers)]

    def seconds(self, prefills: list[tuple[int, int]], decode_ctx: list[int], num_sampled: int | None = None) -> float:
        """The slowest stage's predicted seconds (what sets the pipeline's pace)."""
        return max(self.stage_seconds(prefills, decode_ctx, num_sampled))

    def with_decodes(self, decode_ctx: list[int]) -> Callable[[list[tuple[int, int]], int], float]:
        """A fast ``f(prefills, num_sampled) -> slowest stage seconds`` for candidates that
        share the decodes ``decode_ctx``: their attention is costed once."""
        if not self._composed:
            return lambda prefills, sampled: self.seconds(prefills, decode_ctx, sampled)
        c: CostModel = self.cost
        dec = c.attn_decode(decode_ctx) if decode_ctx else 0.0
        nd = len(decode_ctx)
        layers, n = self.layers, len(self.layers)
        # Only the stages that can be the slowest: the first (embedding), the last (LM head)
        # and one middle stage with the most layers.
        mids = [k for s, k in enumerate(layers) if 0 < s < n - 1]
        mid = max(mids) if mids else None
        first, last = layers[0], layers[-1]

        def f(prefills: list[tuple[int, int]], sampled: int) -> float:
            tokens = nd
            per_layer = dec
            for chunk, cached in prefills:
                tokens += chunk
                per_layer += c.attn_prefill(chunk, cached)
            per_layer += c.token_bound(tokens)
            over = c.overhead(nd + len(prefills), tokens)
            t0 = first * per_layer + over + c.embed(tokens)
            head = c.lm_head(sampled) + c.sample(sampled) if sampled else 0.0
            if n == 1:
                if sampled < tokens:
                    head -= c.last_layer_saving(BatchShape.of(prefills, decode_ctx, sampled))
                return self.scale * (t0 + head)
            tl = last * per_layer + over + head
            best = t0 if t0 > tl else tl
            if mid is not None:
                tm = mid * per_layer + over
                best = best if best > tm else tm
            return best * self.scale
        return f


def as_plan_cost(predictor, layers: list[int]) -> PlanCost | None:
    """``predictor`` as a :class:`PlanCost` for ``layers`` (None stays None; a PlanCost is kept)."""
    if predictor is None or isinstance(predictor, PlanCost):
        return predictor
    return PlanCost(predictor, layers)
