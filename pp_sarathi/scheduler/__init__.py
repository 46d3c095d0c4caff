"""Batching policies (pure Python): which request tokens go into the next micro-batch."""
from __future__ import annotations

from ..config import SchedulerConfig
from .base import BatchBuilder, Scheduler
from .batch import BatchPlan, SampleResult, ScheduledPart
from .block_manager import BlockManager
from .policies import POLICIES
from .sequence import Sequence, SeqStatus

__all__ = ["BatchBuilder", "BatchPlan", "BlockManager", "POLICIES", "SampleResult", "ScheduledPart",
           "Scheduler", "Sequence", "SeqStatus", "make_scheduler"]


def make_scheduler(cfg: SchedulerConfig, blocks: BlockManager, max_model_len: int, max_inflight: int = 1,
                   eos_token_ids: tuple[int, ...] = (), ignore_eos: bool = False, predictor=None) -> Scheduler:
    """The policy ``cfg.name`` asks for. ``predictor``: stage times of candidate batches
    (:class:`pp_sarathi.cost.plan.PlanCost`); sarathi_uniform needs it, the others only record
    their plans' predicted times with it."""
    try:
        cls = POLICIES[cfg.name]
    except KeyError:
        raise ValueError(f"unknown scheduler {cfg.name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(cfg, blocks, max_model_len, max_inflight, eos_token_ids, ignore_eos, predictor)
