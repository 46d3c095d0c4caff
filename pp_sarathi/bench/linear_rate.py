"""How fast the model's linear layers run inside a forward pass, against torch's own matmul on
the same shapes outside it.

Every ``nn.Linear`` of the model is bracketed by clock stamps (forward hooks) while a batch
runs; then each distinct (rows, in, out) shape is timed standalone with ``F.linear`` on fresh
tensors, as many calls as the forward made, interleaved round by round with the forwards so
load changes hit both. The ratio standalone / in-forward is the linear layers' speed as a
fraction of torch's standalone matmul rate (above 1: faster than plain torch, as with the
oneDNN-packed weights of :mod:`pp_sarathi.model.cpu_linear`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.timing import StageClock
from .device import median, synchronize


@dataclass
class LinearRate:
    forward_ms: float  # all linear layers of one forward, median over rounds
    torch_ms: float  # the same shapes and call counts through plain F.linear, standalone
    gflop: float  # linear FLOPs of one forward
    forward_total_ms: float  # the whole forward (same rounds), for the linear share

    @property
    def fraction(self) -> float:
        """In-forward linear speed as a fraction of torch's standalone rate (1.0 = equal)."""
        return self.torch_ms / self.forward_ms if self.forward_ms > 0 else float("nan")

    @property
    def share(self) -> float:
        return self.forward_ms / self.forward_total_ms if self.forward_total_ms > 0 else float("nan")

    @property
    def gflops(self) -> float:
        return self.gflop / self.forward_ms * 1e3 if self.forward_ms > 0 else float("nan")


def measure_linear_rate(model: nn.Module, run: Callable[[], object], clock: StageClock,
                        rounds: int = 5) -> LinearRate:
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    stamps: list[tuple[tuple, object, object]] = []
    pending: dict[int, tuple] = {}

    def pre(mod, args):
        pending[id(mod)] = (tuple(args[0].shape), clock.stamp())

    def post(mod, args, out):
        shape, s = pending.pop(id(mod))
        stamps.append(((shape[0], mod.in_features, mod.out_features), s, clock.stamp()))

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    handles = [h for m in linears for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        run()  # warm-up, and the shapes one forward uses
        stamps.clear()
        run()
        counts: dict[tuple, int] = defaultdict(int)
        for shape, _, _ in stamps:
            counts[shape] += 1
        stamps.clear()
        gen = torch.Generator(device=device).manual_seed(0)
        operands = {s: (torch.randn(s[0], s[1], device=device, generator=gen).to(dtype),
                        (torch.randn(s[2], s[1], device=device, generator=gen) * 0.02).to(dtype)) for s in counts}

        def standalone():
            for s, n in counts.items():
                x, w = operands[s]
                for _ in range(n):
                    F.linear(x, w)
            synchronize(device)

        standalone()
        fwd_lin, fwd_all, alone = [], [], []
        for r in range(rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    stamps.clear()
                    s = clock.stamp()
                    run()
                    e = clock.stamp()
                    fwd_all.append(clock.seconds(e) - clock.seconds(s))
                    fwd_lin.append(sum(clock.seconds(b) - clock.seconds(a) for _, a, b in stamps))
                else:
                    s = clock.stamp()
                    standalone()
                    e = clock.stamp()
                    alone.append(clock.seconds(e) - clock.seconds(s))
    finally:
        for h in handles:
            h.remove()
    gflop = sum(2.0 * s[0] * s[1] * s[2] * n for s, n in counts.items()) / 1e9
    return LinearRate(median(fwd_lin) * 1e3, median(alone) * 1e3, gflop, median(fwd_all) * 1e3)
