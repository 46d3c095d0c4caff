"""Stage timing: stamps resolved only after the run (CUDA events on GPU, checked here with fake
events on CPU), and one clock origin shared by the processes of a host."""
from __future__ import annotations

import time

import pytest
import torch

from pp_sarathi.metrics.timing import StageClock, StageTimeline


class FakeEvent:
    """Stands in for torch.cuda.Event: remembers the host time it was recorded at and counts
    synchronisations, so the test can tell when the clock waits on the device."""

    syncs = 0

    def __init__(self, enable_timing: bool = False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        FakeEvent.syncs += 1

    def elapsed_time(self, other: "FakeEvent") -> float:
        return (other.t - self.t) * 1e3  # milliseconds, like CUDA


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    FakeEvent.syncs = 0


def test_gpu_stamps_are_events_resolved_only_at_the_end(fake_cuda):
    clock = StageClock("cuda")
    tl = StageTimeline(clock, stage=1)
    for b in range(3):
        stamps = [clock.stamp() for _ in range(6)]
        assert all(isinstance(s, FakeEvent) for s in stamps)
        tl.add(b, *stamps)
    assert FakeEvent.syncs == 0, "recording must not synchronise the device"
    recs = tl.records()
    assert FakeEvent.syncs == 3 * 6
    assert [r.batch_id for r in recs] == [0, 1, 2] and all(r.stage == 1 for r in recs)
    for r in recs:
        times = [r.recv_start, r.recv_end, r.compute_start, r.compute_end, r.send_start, r.send_end]
        assert times == sorted(times) and 0 <= times[0] < 5


def test_adopted_origin_shifts_host_and_device_stamps_alike(fake_cuda):
    clock = StageClock("cuda")
    host_before, ev = clock.now(), clock.stamp()
    clock.adopt_origin(clock.origin - 2.0)  # another rank started its clock 2 s earlier
    assert clock.now() == pytest.approx(host_before + 2.0, abs=0.05)
    assert clock.seconds(ev) == pytest.approx(host_before + 2.0, abs=0.05)


def test_cpu_stamps_are_host_seconds():
    clock = StageClock("cpu")
    tl = StageTimeline(clock, 0)
    s = clock.stamp()
    assert isinstance(s, float)
    tl.add(7, s, s, s, s + 1, s + 1, s + 2)
    (r,) = tl.records()
    assert (r.batch_id, r.compute_end - r.compute_start, r.send_end) == (7, 1, s + 2)


def test_cpu_used_counts_computing_not_waiting():
    """The clock books the CPU its process used since the origin: a busy loop shows up as user
    time, a sleep of the same length does not, and fresh pages show up as page faults."""
    pytest.importorskip("resource")
    clock = StageClock("cpu")
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        sum(range(1000))
    busy = clock.cpu_used()
    time.sleep(0.3)
    idle = clock.cpu_used()
    assert busy["cpu_user_s"] + busy["cpu_sys_s"] >= 0.15, busy
    assert (idle["cpu_user_s"] + idle["cpu_sys_s"]) - (busy["cpu_user_s"] + busy["cpu_sys_s"]) < 0.1, (busy, idle)
    clock.reset()
    import mmap
    with mmap.mmap(-1, 64 * 4096) as m:  # anonymous memory: each page faults on its first write
        for page in range(64):
            m[page * 4096] = 1
    assert clock.cpu_used()["page_faults"] >= 64
