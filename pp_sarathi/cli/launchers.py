"""Launcher integration: which pipeline stage a rank runs (DeepSpeed's topology when present)."""
from __future__ import annotations


def stage_of_rank(rank: int, world: int) -> int:
    """Map a global rank to its pipeline stage with DeepSpeed's pipe/data topology (data-parallel
    degree 1 today, so later axes slot in); without DeepSpeed the rank is the stage."""
    try:
        from deepspeed.runtime.pipe.topology import PipeDataParallelTopology
    except Exception:
        return rank
    topo = PipeDataParallelTopology(num_pp=world, num_dp=1)
    return topo.get_coord(rank).pipe
