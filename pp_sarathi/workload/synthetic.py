"""Seeded synthetic workloads: request lengths, P:D split, arrival times, random prompts."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import WorkloadConfig
from .request import Request


def sample_lengths(cfg: WorkloadConfig, rng: np.random.Generator) -> np.ndarray:
    """Total request lengths (prompt + output) in ``[min_len, max_len]``."""
    n, lo, hi = cfg.num_requests, cfg.min_len, cfg.max_len
    if cfg.length_dist == "fixed":
        return np.full(n, hi, dtype=np.int64)
    if cfg.length_dist == "uniform":
        return rng.integers(lo, hi + 1, size=n)
    if cfg.length_dist == "zipf":
        # P(length = lo + k) proportional to 1 / (k + 1)^theta, k = 0 .. hi - lo.
        ranks = np.arange(1, hi - lo + 2, dtype=np.float64)
        p = ranks ** -cfg.zipf_theta
        return lo + rng.choice(len(ranks), size=n, p=p / p.sum())
    raise ValueError(f"workload.length_dist must be fixed, uniform or zipf, not {cfg.length_dist!r}")


def split_pd(total: int, pd_ratio: float) -> tuple[int, int]:
    """Split a request length into (prompt, output) tokens with prompt/output close to ``pd_ratio``."""
    decode = max(1, int(round(total / (1.0 + pd_ratio))))
    prompt = max(1, total - decode)
    return prompt, decode


def arrival_times(cfg: WorkloadConfig, rng: np.random.Generator) -> np.ndarray:
    n = cfg.num_requests
    if cfg.arrival == "static":
        return np.zeros(n)
    if cfg.arrival == "poisson":
        gaps = rng.exponential(1.0 / cfg.qps, size=n)
    elif cfg.arrival == "gamma":
        shape = 1.0 / cfg.gamma_cv ** 2
        gaps = rng.gamma(shape, 1.0 / (cfg.qps * shape), size=n)
    else:
        raise ValueError(f"workload.arrival must be static, poisson or gamma, not {cfg.arrival!r}")
    gaps[0] = 0.0
    return np.cumsum(gaps)


def random_prompt(rng: np.random.Generator, length: int, vocab_size: int, avoid: tuple[int, ...]) -> list[int]:
    ids = rng.integers(0, vocab_size, size=length)
    for tok in avoid:  # keep special ids (eos) out of prompts
        ids[ids == tok] = (tok + 1) % vocab_size
    return ids.tolist()


def synthetic_requests(cfg: WorkloadConfig, vocab_size: int, avoid: tuple[int, ...] = (),
                       make_prompt: Callable[[int], list[int]] | None = None) -> list[Request]:
    """Seeded requests; ``make_prompt(n)`` replaces the random prompt ids (the simulator passes
    placeholders). Lengths and arrivals do not depend on it."""
    rng = np.random.default_rng(cfg.seed)
    lengths = sample_lengths(cfg, rng)
    arrivals = arrival_times(cfg, rng)
    if make_prompt is None:
        def make_prompt(n: int) -> list[int]:
            return random_prompt(rng, n, vocab_size, avoid)
    out = []
    for i, (total, t) in enumerate(zip(lengths, arrivals)):
        prompt, decode = split_pd(int(total), cfg.pd_ratio)
        out.append(Request(id=f"req-{i}", prompt_token_ids=make_prompt(prompt),
                           max_tokens=decode, arrival_time=float(t), index=i, ignore_eos=True))
    return out
