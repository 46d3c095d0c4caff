"""Split the model's layers into pipeline stages.

``balanced`` minimises the slowest stage's predicted time for a reference micro-batch (a
budget-sized prefill chunk with a micro-batch's worth of decodes): a layer costs what the
stage-time predictor says, the first stage adds the embedding lookup, the last the LM head
and sampler over the sampled rows only.
"""
from __future__ import annotations

import math

from ..config import HardwareConfig, SchedulerConfig
from ..cost import BatchShape, CostModel, RooflineCosts, StageTimePredictor
from ..model.arch import ModelArch


def reference_shape(sched: SchedulerConfig, pp: int, max_len: int) -> BatchShape:
    """A typical hybrid micro-batch: ``chunk_size`` tokens of prompt over as many cached,
    plus one micro-batch's share of decodes at twice that context."""
    decodes = max(0, math.ceil(sched.max_batch_size / max(1, pp)) - 1)
    chunk = max(1, min(sched.chunk_size, max_len // 2))
    ctx = max(1, min(2 * chunk, max_len - 1))
    return BatchShape.of([(chunk, min(chunk, max_len - chunk - 1))], [ctx] * decodes, decodes + 1)


def _layer_costs(arch: ModelArch, cost: StageTimePredictor, ref: BatchShape) -> tuple[list[float], float, float]:
    """Predicted seconds of each layer, the first stage's and the last stage's extra work."""
    bare = cost.stage_seconds(ref, 0)
    layer = cost.layer_time(ref) if isinstance(cost, CostModel) else cost.stage_seconds(ref, 1) - bare
    first = cost.stage_seconds(ref, 0, first=True) - bare
    last = cost.stage_seconds(ref, 0, last=True) - bare
    return [layer] * arch.num_layers, first, last


def predicted_stage_seconds(arch: ModelArch, counts: list[int], cost: StageTimePredictor,
                            ref: BatchShape) -> list[float]:
    """Predicted seconds of ``ref`` on every stage of the split ``counts``."""
    n = len(counts)
    return [cost.stage_seconds(ref, c, s == 0, s == n - 1) for s, c in enumerate(counts)]


def _min_max_split(weights: list[float], parts: int) -> list[int]:
    """Contiguous split of ``weights`` into ``parts`` non-empty runs minimising the largest sum
    (exact dynamic programme); returns the run lengths."""
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(k, n + 1):
            for m in range(k - 1, j):
                cost = max(best[k - 1][m], prefix[j] - prefix[m])
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, m
    sizes, j = [], n
    for k in range(parts, 0, -1):
        m = cut[k][j]
        sizes.append(j - m)
        j = m
    return sizes[::-1]


def layer_counts(arch: ModelArch, pp: int, partition, cost: StageTimePredictor | None = None,
                 ref: BatchShape | None = None) -> list[int]:
    """Layers per stage for ``parallel.partition``: uniform, balanced or an explicit list.
    ``balanced`` uses ``cost`` (default: the CPU roofline) on ``ref`` (default:
    :func:`reference_shape` of the default scheduler settings)."""
    n = arch.num_layers
    if pp < 1:
        raise ValueError(f"parallel.pp must be >= 1, got {pp}")
    if pp > n:
        raise ValueError(f"parallel.pp={pp} is larger than the model's {n} layers")
    if isinstance(partition, (list, tuple)) or (hasattr(partition, "__iter__") and not isinstance(partition, str)):
        counts = [int(c) for c in partition]
        if len(counts) != pp or sum(counts) != n or min(counts) < 1:
            raise ValueError(f"parallel.partition={counts} must list {pp} positive layer counts "
                             f"summing to the model's {n} layers")
        return counts
    if partition == "uniform":
        base, extra = divmod(n, pp)
        # Extra layers go to the middle stages: the ends also hold the embedding and LM head.
        order = sorted(range(pp), key=lambda s: (s in (0, pp - 1), s))
        counts = [base] * pp
        for s in order[:extra]:
            counts[s] += 1
        return counts
    if partition == "balanced":
        cost = cost or RooflineCosts(arch, "float32", HardwareConfig())
        ref = ref or reference_shape(SchedulerConfig(), pp, arch.max_position_embeddings)
        layers, embed, head = _layer_costs(arch, cost, ref)
        weights = list(layers)
        weights[0] += embed
        weights[-1] += head
        return _min_max_split(weights, pp)
    raise ValueError(f"parallel.partition must be uniform, balanced or a list, not {partition!r}")


def layer_ranges(counts: list[int]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for c in counts:
        ranges.append((start, start + c))
        start += c
    return ranges
