"""The one timing abstraction: stage clocks that stamp events (perf_counter on CPU, CUDA events
on GPU, resolved only at the end so the hot path never synchronises)."""
from __future__ import annotations

import time
import torch


class StageClock:
    """Stamps instants relative to a common origin (set right after a barrier on every rank)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.reset()

    def reset(self) -> None:
        self._origin = time.perf_counter()
        if self.cuda:
            self._origin_event = torch.cuda.Event(enable_timing=True)
            self._origin_event.record()

    def now(self) -> float:
        """Host time in seconds since the origin."""
        return time.perf_counter() - self._origin

    def sleep_until(self, t: float) -> None:
        """Wait until host time ``t`` (the simulator's virtual clock jumps instead)."""
        time.sleep(max(0.0, t - self.now()))

    def stamp(self):
        """A device-side stamp (CUDA event) on GPU, host time on CPU; resolve with :meth:`seconds`."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return self.now()

    def seconds(self, stamp) -> float:
        if isinstance(stamp, float):
            return stamp
        stamp.synchronize()
        return self._origin_event.elapsed_time(stamp) / 1e3

