"""Point-to-point message times over gloo between two fresh local processes."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from .workers import run_workers


def p2p_worker(rank: int, init_file: str, sizes: list[int], repeats: int) -> list[tuple[int, list[float]]]:
    """One rank of :func:`measure_p2p`: ping-pong ``repeats`` times per size (more for small ones)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    out = []
    try:
        peer = 1 - rank
        for n in sizes:
            buf = torch.zeros(max(1, n), dtype=torch.uint8)
            rtts = []
            reps = repeats * 4 if n < (1 << 20) else repeats
            for i in range(reps + 5):
                if rank == 0:
                    t0 = time.perf_counter()
                    dist.send(buf, peer)
                    dist.recv(buf, peer)
                    if i >= 5:
                        rtts.append(time.perf_counter() - t0)
                else:
                    dist.recv(buf, peer)
                    dist.send(buf, peer)
            if rank == 0:
                out.append((n, [t / 2 for t in rtts]))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return out


def measure_p2p(sizes: list[int], repeats: int = 5, timeout_s: float = 120.0) -> list[tuple[int, list[float]]]:
    """(bytes, one-way times) of gloo messages between two fresh local processes (ping-pong / 2)."""
    with tempfile.TemporaryDirectory() as d:
        arg = {"init_file": str(Path(d) / "pg"), "sizes": sizes, "repeats": repeats}
        return [tuple(x) for x in run_workers("p2p-worker", 2, arg, timeout_s)]
