"""A window of a real trace sized for a run: the first ``num_requests`` rows after ``offset``,
arrivals (after an offset: rebased to the window's first request) scaled by ``time_scale``
(0 = all at once),
prompt + output clipped to the model's context (how many were clipped is logged)."""
from __future__ import annotations

import logging

from ..config import WorkloadConfig
from .files import trace_requests
from .request import Request

log = logging.getLogger("pp_sarathi")


def clip_to_context(req: Request, max_len: int) -> bool:
    """Shorten ``req`` so prompt + output fit ``max_len`` tokens: the prompt keeps at most
    ``max_len - 1`` tokens, the output what is left. Returns whether it was clipped."""
    prompt = req.prompt_token_ids
    if len(prompt) + req.max_tokens <= max_len:
        return False
    keep = min(len(prompt), max_len - 1)
    req.prompt_token_ids = prompt[:keep]
    req.max_tokens = max(1, min(req.max_tokens, max_len - keep))
    return True


def trace_window(cfg: WorkloadConfig, vocab_size: int, eos_token_ids: tuple[int, ...] = (),
                 max_len: int | None = None) -> list[Request]:
    """``workload=trace`` as the config asks (see the module doc)."""
    if cfg.offset < 0:
        raise ValueError(f"workload.offset must be >= 0, got {cfg.offset}")
    if cfg.time_scale < 0:
        raise ValueError(f"workload.time_scale must be >= 0, got {cfg.time_scale}")
    limit = cfg.num_requests if cfg.num_requests > 0 else None
    reqs = trace_requests(cfg.path, vocab_size, cfg.seed, eos_token_ids, cfg.offset, limit)
    # A window further into the trace starts when its first request arrives (not hours in).
    t0 = min(r.arrival_time for r in reqs) if cfg.offset else 0.0
    for r in reqs:
        r.arrival_time = (r.arrival_time - t0) * cfg.time_scale
    if cfg.clip_to_context and max_len:
        clipped = sum(clip_to_context(r, max_len) for r in reqs)
        if clipped:
            log.info("trace %s: %d of %d requests clipped to the model's context of %d tokens",
                     cfg.path, clipped, len(reqs), max_len)
    return reqs
