"""The one timing abstraction: stage clocks that stamp events (perf_counter on CPU, CUDA events
on GPU, resolved only at the end so the hot path never synchronises), and the CPU their process
used since the clock's origin."""
from __future__ import annotations

import time

try:
    import resource
except ImportError:  # Windows has no resource module: no CPU accounting there
    resource = None

import torch

from .records import StageRecord


class StageClock:
    """Stamps instants relative to a common origin (set right after a barrier on every rank)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.reset()

    def reset(self) -> None:
        self._origin = time.perf_counter()
        self._cpu_origin = _process_cpu()
        self._event_offset = 0.0  # host seconds from the origin to the origin event
        if self.cuda:
            self._origin_event = torch.cuda.Event(enable_timing=True)
            self._origin_event.record()

    def adopt_origin(self, origin: float) -> None:
        """Use another process's origin. ``perf_counter`` is the system-wide monotonic clock on
        Linux, so processes on one host share it exactly; resetting each after a barrier
        would leave them apart by however long each took to leave the barrier."""
        self._event_offset += self._origin - origin
        self._origin = origin

    @property
    def origin(self) -> float:
        return self._origin

    def now(self) -> float:
        """Host time in seconds since the origin."""
        return time.perf_counter() - self._origin

    def sleep_until(self, t: float) -> None:
        """Wait until host time ``t`` (the simulator's virtual clock jumps instead)."""
        time.sleep(max(0.0, t - self.now()))

    def cpu_used(self) -> dict:
        """What this process used since the origin: user and system CPU seconds over all its
        threads, and minor page faults (first touches of pages). Against the wall time they tell
        a stage that computed from one that waited for a core (stages sharing cores), and how
        much of its time the kernel took (page faults, wake-ups). Each None where unavailable."""
        now, start = _process_cpu(), self._cpu_origin
        if now is None or start is None:
            return dict.fromkeys(CPU_KEYS)
        return dict(zip(CPU_KEYS, (b - a for a, b in zip(start, now))))

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
        return self._event_offset + self._origin_event.elapsed_time(stamp) / 1e3


# results.json stages[] keys of StageClock.cpu_used, in the order of _process_cpu.
CPU_KEYS = ("cpu_user_s", "cpu_sys_s", "page_faults")


def _process_cpu() -> tuple[float, float, int] | None:
    if resource is None:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


class StageTimeline:
    """One stage's records as stamps, resolved to :class:`StageRecord` only at the end.

    Stamps are host times on CPU and CUDA events on GPU, so recording a micro-batch never
    synchronises the device; :meth:`records` does, once, after the run."""

    def __init__(self, clock: StageClock, stage: int):
        self.clock, self.stage = clock, stage
        self._rows: list[tuple] = []

    def add(self, batch_id: int, recv_start, recv_end, compute_start, compute_end, send_start, send_end) -> None:
        self._rows.append((batch_id, recv_start, recv_end, compute_start, compute_end, send_start, send_end))

    def __len__(self) -> int:
        return len(self._rows)

    def records(self) -> list[StageRecord]:
        sec = self.clock.seconds
        return [StageRecord(self.stage, bid, *(sec(x) for x in stamps)) for bid, *stamps in self._rows]
