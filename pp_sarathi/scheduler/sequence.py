"""Scheduling state of one request: tokens so far, KV progress, blocks, timestamps."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..workload.request import Request


class SeqStatus(enum.Enum):
    PENDING = "pending"  # not arrived yet
    WAITING = "waiting"  # arrived (or preempted), holds no KV
    RUNNING = "running"  # admitted, holds KV blocks
    FINISHED = "finished"


@dataclass
class Sequence:
    request: Request
    status: SeqStatus = SeqStatus.PENDING
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_scheduled: int = 0  # tokens handed to micro-batches: in the cache or on their way there
    max_computed: int = 0  # most tokens ever in the cache (a preemption drops them; this stays)
    block_table: list[int] = field(default_factory=list)
    in_flight: int = 0  # parts of this request in micro-batches that have not come back yet
    finish_reason: str | None = None
    text: str | None = None  # decoded output, set on finishing when a tokenizer is known
    # Metrics (seconds since the run started).
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish_time: float | None = None
    num_preemptions: int = 0
    preempted_s: float = 0.0
    preempted_at: float | None = None  # when it was last preempted, until it is admitted again

    def __post_init__(self):
        # Prompts never change; simulated ones are lazy sequences whose len() is Python code.
        self.prompt_len = len(self.request.prompt_token_ids)

    @property
    def index(self) -> int:
        return self.request.index

    @property
    def arrival_time(self) -> float:
        return self.request.arrival_time

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.output_token_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        prompt = self.request.prompt_token_ids
        n = self.prompt_len
        if end <= n:
            return prompt[start:end]
        if start >= n:  # decodes: never copy the whole prompt for one token
            return self.output_token_ids[start - n:end - n]
        return list(prompt[start:]) + self.output_token_ids[:end - n]

    @property
    def num_unscheduled(self) -> int:
        """Known tokens no micro-batch has taken yet."""
        return self.num_tokens - self.num_scheduled

    @property
    def is_prefill(self) -> bool:
        """True while prompt tokens (or, after a preemption, recomputed tokens) remain."""
        return not self.output_token_ids or self.num_unscheduled > 1

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
