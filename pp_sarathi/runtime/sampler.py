"""Token sampling on the last stage: greedy, temperature, top-k, top-p, top-k logprobs.

Random draws use a generator seeded from (sampling.seed, request index, output index), so a
request's tokens do not depend on how it was batched, chunked, pipelined or preempted.
"""
from __future__ import annotations

import hashlib

import torch

from ..config import SamplingConfig
from ..scheduler.batch import SampleResult


def draw_seed(seed: int, seq_index: int, output_index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{seq_index}:{output_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class Sampler:
    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg

    def __call__(self, logits: torch.Tensor, keys: list[tuple[int, int]]) -> list[SampleResult]:
        """``logits`` float32 ``[L, vocab]``; ``keys[i]`` = (request index, output index) of row i."""
        cfg = self.cfg
        if cfg.temperature == 0:
            chosen = logits.argmax(dim=-1)
        else:
            chosen = torch.stack([self._draw(row, key) for row, key in zip(logits, keys)])
        out = [SampleResult(int(t)) for t in chosen.tolist()]
        if cfg.logprobs:
            logp = torch.log_softmax(logits, dim=-1)
            top_v, top_i = logp.topk(min(cfg.logprobs, logp.shape[-1]), dim=-1)
            chosen_lp = logp.gather(1, chosen[:, None])[:, 0]
            for res, vals, ids, lp in zip(out, top_v.tolist(), top_i.tolist(), chosen_lp.tolist()):
                res.logprobs = dict(zip(ids, vals))
                res.logprobs[res.token_id] = lp
        return out

    def _draw(self, row: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
        cfg = self.cfg
        scores = row / cfg.temperature
        if cfg.top_k:
            kth = scores.topk(min(cfg.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if cfg.top_p < 1.0:
            sorted_s, order = scores.sort(descending=True)
            cum = sorted_s.softmax(-1).cumsum(-1)
            drop = cum - sorted_s.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        gen = torch.Generator().manual_seed(draw_seed(cfg.seed, *key))
        return torch.multinomial(scores.softmax(-1).cpu(), 1, generator=gen)[0]
