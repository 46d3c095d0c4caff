"""How fast the model's linear layers run inside a forward pass, against the same matmuls
outside it.

Every ``nn.Linear`` of the model is bracketed by clock stamps (forward hooks) while a batch
runs; then each distinct (rows, in, out) shape is timed standalone, as many calls as the
forward made, on fresh tensors, twice: with torch's plain ``F.linear``, and with the model's own
layer (the same kernel, e.g. the oneDNN-packed weights of :mod:`pp_sarathi.model.cpu_linear`,
outside the forward). Both are interleaved round by round with the forwards so load changes
hit all three. standalone / in-forward is the in-forward speed as a fraction of that rate:
against ``F.linear`` it shows what the kernel choice buys (above 1: faster than plain torch),
against the layer itself what the forward costs it (1.0: nothing; cache misses between layers,
allocation or thread hand-offs show as less).
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
    own_ms: float  # the same shapes and call counts through the model's own layers, standalone
    gflop: float  # linear FLOPs of one forward
    forward_total_ms: float  # the whole forward (same rounds), for the linear share

    @property
    def fraction(self) -> float:
        """In-forward linear speed as a fraction of torch's standalone rate (1.0 = equal)."""
        return self.torch_ms / self.forward_ms if self.forward_ms > 0 else float("nan")

    @property
    def own_fraction(self) -> float:
        """In-forward linear speed as a fraction of the same layers run standalone (1.0 = equal)."""
        return self.own_ms / self.forward_ms if self.forward_ms > 0 else float("nan")

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
    layer_of: dict[tuple, nn.Module] = {}  # one of the model's layers per shape

    def pre(mod, args):
        pending[id(mod)] = (tuple(args[0].shape), clock.stamp())

    def post(mod, args, out):
        shape, s = pending.pop(id(mod))
        key = (shape[0], mod.in_features, mod.out_features)
        stamps.append((key, s, clock.stamp()))
        layer_of.setdefault(key, mod)

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

        def own_layers():
            with torch.inference_mode():
                for s, n in counts.items():
                    x, layer = operands[s][0], layer_of[s]
                    for _ in range(n):
                        layer.forward(x)  # .forward: not through the hooks
            synchronize(device)

        standalone()
        own_layers()
        fwd_lin, fwd_all, alone, own = [], [], [], []
        for r in range(rounds):
            order = (0, 1, 2) if r % 2 == 0 else (2, 1, 0)
            for which in order:
                if which == 0:
                    stamps.clear()
                    s = clock.stamp()
                    run()
                    e = clock.stamp()
                    fwd_all.append(clock.seconds(e) - clock.seconds(s))
                    fwd_lin.append(sum(clock.seconds(b) - clock.seconds(a) for _, a, b in stamps))
                else:
                    fn, out = (standalone, alone) if which == 1 else (own_layers, own)
                    s = clock.stamp()
                    fn()
                    e = clock.stamp()
                    out.append(clock.seconds(e) - clock.seconds(s))
    finally:
        for h in handles:
            h.remove()
    gflop = sum(2.0 * s[0] * s[1] * s[2] * n for s, n in counts.items()) / 1e9
    return LinearRate(median(fwd_lin) * 1e3, median(alone) * 1e3, median(own) * 1e3, gflop, median(fwd_all) * 1e3)
