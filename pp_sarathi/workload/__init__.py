"""Workloads: where requests come from (synthetic, JSONL, trace CSV)."""
from __future__ import annotations

from typing import Callable

from ..config import WorkloadConfig
from .files import WorkloadFileError, jsonl_requests
from .request import Request
from .synthetic import synthetic_requests
from .trace import trace_window

__all__ = ["Request", "WorkloadFileError", "load_workload"]


def load_workload(cfg: WorkloadConfig, vocab_size: int, eos_token_ids: tuple[int, ...] = (),
                  tokenize: Callable[[str], list[int]] | None = None,
                  max_len: int | None = None) -> list[Request]:
    """Build the request list the config names; raises early on bad input. ``tokenize``
    encodes the text prompts of a JSONL file; ``max_len``: the model's context (traces are
    clipped to it)."""
    if cfg.name == "synthetic":
        return synthetic_requests(cfg, vocab_size, eos_token_ids)
    if cfg.name == "jsonl":
        return jsonl_requests(cfg.path, cfg.max_tokens, tokenize)
    if cfg.name == "trace":
        return trace_window(cfg, vocab_size, eos_token_ids, max_len)
    raise ValueError(f"workload must be synthetic, jsonl or trace, not {cfg.name!r}")
