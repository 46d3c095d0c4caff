"""Split the model's layers into pipeline stages."""
from __future__ import annotations

from ..model.arch import ModelArch
from ..model.shapes import embedding_params, linear_params_per_layer


def _layer_costs(arch: ModelArch) -> tuple[list[float], float, float]:
    """Relative costs (parameter counts) of each layer, the embedding and the LM head."""
    layer = linear_params_per_layer(arch)
    embed = embedding_params(arch)
    return [float(layer)] * arch.num_layers, float(embed), float(embed)


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


def layer_counts(arch: ModelArch, pp: int, partition) -> list[int]:
    """Layers per stage for ``parallel.partition``: uniform, balanced or an explicit list."""
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
        layers, embed, head = _layer_costs(arch)
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
