"""A request as the workload describes it (what to run), before any scheduling state."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Request:
    id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float = 0.0  # seconds after the run starts
    index: int = 0  # position in the input; outputs keep this order
    error: str | None = None  # set when the request cannot run (it still gets an output line)
    ignore_eos: bool = False  # synthetic/trace lengths are exact: generate max_tokens whatever comes
