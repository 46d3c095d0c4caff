"""Run records: what a run (real or simulated) hands to the metrics layer.

They sit below the runtime and the simulator, which both fill them, and above the scheduler
whose sequences they carry. Times are seconds since the run's common origin.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..scheduler.sequence import Sequence


@dataclass(slots=True)
class StageRecord:
    """What one stage did for one micro-batch."""

    stage: int
    batch_id: int
    recv_start: float
    recv_end: float
    compute_start: float
    compute_end: float
    send_start: float
    send_end: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class BatchRecord:
    """One micro-batch as the driver saw it."""

    batch_id: int
    kind: str
    num_requests: int
    num_prefill_tokens: int
    num_decode_tokens: int
    scheduled_at: float
    done_at: float
    request_indices: list[int]
    # The scheduler's predicted compute seconds of this micro-batch per stage (None: no predictor).
    predicted_stage_s: list[float] | None = None
    # The target stage time the planner aimed at (sarathi_uniform), seconds.
    target_s: float | None = None


@dataclass(slots=True)
class DriverSpan:
    """A stretch of work by the driver (rank 0's scheduler side), on its own track.

    ``kind``: ``schedule`` (a scheduler call that produced a micro-batch), ``results`` (applying
    a returned micro-batch to the scheduler) or ``output`` (writing finished requests)."""

    kind: str
    start: float
    end: float


@dataclass(slots=True)
class SimInfo:
    """What only a simulated run knows."""

    info: dict = field(default_factory=dict)  # cost model, virtual time, KV sizing, ... (results.json "sim")
    # batch id -> per-stage factor the jitter draw applied to the predicted compute
    jitter_factor: dict[int, list[float]] = field(default_factory=dict)


@dataclass(slots=True)
class RunOutcome:
    sequences: list[Sequence]  # in input order
    batches: list[BatchRecord]
    stage_records: list[StageRecord]
    num_stages: int
    wall_s: float
    layer_ranges: list[tuple[int, int]] = field(default_factory=list)
    device: str = "cpu"
    error: str | None = None  # set when the run ended early (a failed stage, ...)
    driver_spans: list[DriverSpan] = field(default_factory=list)  # the driver's own work
    sim: SimInfo | None = None  # set by the simulator
    predictor: dict | None = None  # the stage-time predictor the scheduler used (its describe())
    # stage -> its process's torch threads, the CPUs they may run on, whether the run bound them
    stage_cpus: dict[int, dict] = field(default_factory=dict)
    # pipelines: parallel.transport and, per stage link, how its forward hops travelled
    transport: dict | None = None
