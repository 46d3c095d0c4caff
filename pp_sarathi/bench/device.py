"""What device we are on, how fast it really is (measured peaks), and interleaved timing."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..metrics.timing import StageClock


def cpu_model() -> str:
    """The CPU model name as lscpu reports it (from /proc/cpuinfo), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(idx)} (cuda:{idx})"
    n = torch.get_num_threads()
    return f"CPU {cpu_model()}, {n} thread{'s' if n != 1 else ''}"


def device_info(device: torch.device, dtype: torch.dtype) -> dict:
    info = {"device": describe_device(device), "device_type": torch.device(device).type,
            "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if torch.device(device).type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info.update(cuda=torch.version.cuda, gpu_mem_total_gb=total / 2**30, gpu_mem_free_gb=free / 2**30)
    return info


def synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(clock: StageClock, fns: dict[str, Callable[[], object]], warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples after ``warmup`` rounds.

    The functions run interleaved (round-robin, the starting one rotating every round) so that
    a load change on a shared machine hits all of them alike. Each call is bracketed by clock
    stamps (CUDA events on GPU, perf_counter on CPU); a call must end in a host sync on GPU
    (e.g. reading the sampled token) if host overhead is to count, as it does in a real
    iteration.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    stamps: dict[str, list] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            s = clock.stamp()
            fns[n]()
            e = clock.stamp()
            stamps[n].append((s, e))
    return {n: [clock.seconds(e) - clock.seconds(s) for s, e in v] for n, v in stamps.items()}


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@dataclass
class DevicePeaks:
    """Measured (not datasheet) peaks of this device."""

    matmul_flops: float  # FLOP/s of a large square matmul in the model dtype
    matmul_n: int
    copy_bytes_per_s: float  # bytes read + written per second by a large tensor copy
    copy_mib: int
    dtype: str

    def best(self, other: "DevicePeaks") -> "DevicePeaks":
        """The higher of two measurements of each peak (a busy moment only ever lowers one)."""
        return DevicePeaks(max(self.matmul_flops, other.matmul_flops), self.matmul_n,
                           max(self.copy_bytes_per_s, other.copy_bytes_per_s), self.copy_mib, self.dtype)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["matmul_tflops"] = self.matmul_flops / 1e12
        d["copy_gb_per_s"] = self.copy_bytes_per_s / 1e9
        return d


def measure_peaks(device: torch.device, dtype: torch.dtype, matmul_n: int | None = None,
                  copy_mib: int | None = None, repeats: int | None = None) -> DevicePeaks:
    """Peak matmul FLOP/s (best of ``repeats``) and copy bandwidth on ``device`` in ``dtype``."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = matmul_n or (8192 if cuda else 1536)
    repeats = repeats or (20 if cuda else 6)
    mib = copy_mib or (2048 if cuda else 256)
    clock = StageClock(device)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    mm = time_interleaved(clock, {"mm": lambda: (torch.mm(a, b), synchronize(device))}, 1, repeats)["mm"]
    flops = 2.0 * n ** 3 / min(mm)
    del a, b
    numel = mib * 2**20 // 4
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    cp = time_interleaved(clock, {"copy": lambda: (dst.copy_(src), synchronize(device))}, 1, repeats)["copy"]
    bw = 2.0 * src.numel() * src.element_size() / min(cp)
    del src, dst
    return DevicePeaks(flops, n, bw, mib, str(dtype).replace("torch.", ""))
