"""Fitting measured points: weighted least squares and piecewise-linear interpolation.

Fitting runs once per profile with numpy; the fitted objects are then called with plain
Python floats (no numpy per call).
"""
from __future__ import annotations

import bisect

import numpy as np


def weighted_lstsq(feats, ys, ws) -> list[float]:
    """Coefficients ``w`` minimising ``sum_i (ws_i * (feats_i . w - ys_i))**2``."""
    a = np.asarray(feats, dtype=np.float64)
    w = np.asarray(ws, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a * w[:, None], np.asarray(ys, dtype=np.float64) * w, rcond=None)
    return [float(c) for c in coef]


def relative_weights(ys, floor: float = 1e-9) -> list[float]:
    """Weights ``1 / y``: a least-squares fit of relative errors, so that small shapes matter
    as much as big ones."""
    return [1.0 / max(float(y), floor) for y in ys]


class LinearFit:
    """Relative least squares ``y ~ features . coef`` (non-negative predictions)."""

    def __init__(self, feats, ys, names: list[str]):
        if len(ys) == 0:
            raise ValueError("no points to fit")
        self.coef = weighted_lstsq(feats, ys, relative_weights(ys))
        self.names = names

    def __call__(self, *features: float) -> float:
        return max(0.0, sum(c * f for c, f in zip(self.coef, features)))


class Interp1D:
    """Piecewise-linear interpolation on sorted points. Below the first point: the first
    segment's line; beyond the last: the last point plus the least-squares slope of the points
    in the upper half of the range (one noisy end point does not set the slope of everything
    beyond it)."""

    def __init__(self, xs, ys):
        pts = sorted(zip(map(float, xs), map(float, ys)))
        # Repeated x: their median.
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


def straighten(xs, ys, start: int) -> tuple[list, list]:
    """Points at ``x >= start`` replaced by a relative least-squares line through them, when
    there are at least three distinct ``x``; smaller ``x`` are kept as measured."""
    big = [(x, y) for x, y in zip(xs, ys) if x >= start]
    if len({x for x, _ in big}) < 3:
        return list(xs), list(ys)
    a, b = weighted_lstsq([[1.0, x] for x, _ in big], [y for _, y in big], relative_weights([y for _, y in big], 1e-12))
    return list(xs), [y if x < start else max(a + b * x, 1e-12) for x, y in zip(xs, ys)]
