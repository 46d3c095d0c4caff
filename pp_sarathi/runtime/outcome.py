"""What a run (real or simulated) hands to the metrics layer."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..metrics.timing import StageRecord
from ..scheduler.sequence import Sequence
from .driver import BatchRecord


@dataclass
class RunOutcome:
    sequences: list[Sequence]  # in input order
    batches: list[BatchRecord]
    stage_records: list[StageRecord]
    num_stages: int
    wall_s: float
    layer_ranges: list[tuple[int, int]] = field(default_factory=list)
    device: str = "cpu"
    error: str | None = None  # set when the run ended early (a failed stage, ...)
