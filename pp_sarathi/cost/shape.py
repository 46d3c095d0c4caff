"""What a micro-batch is for costing: its tokens, parts, attention work and sampled rows."""
from __future__ import annotations

from dataclasses import dataclass, field

from .messages import plan_meta_ints


@dataclass
class BatchShape:
    """One micro-batch as every cost model sees it.

    ``num_tokens`` rows go through the linear layers at once; each multi-token part is a
    prefill chunk ``(chunk tokens, cached tokens before it)``; each single-token part a decode
    whose ``decode_ctx`` counts its whole context including the new token; ``num_sampled``
    rows reach the LM head and the sampler, ``sampled_ctx`` their contexts (what they attend
    to in the model's last layer); ``meta_ints`` is the plan metadata on the wire
    (:mod:`pp_sarathi.cost.messages`).
    """

    num_tokens: int
    num_parts: int
    prefills: list[tuple[int, int]]
    decode_ctx: list[int]
    num_sampled: int
    meta_ints: int
    sampled_ctx: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, prefills: list[tuple[int, int]], decode_ctx: list[int], num_sampled: int | None = None,
           meta_ints: int = 0) -> "BatchShape":
        """From its parts: tokens and parts are counted; every part samples unless
        ``num_sampled`` says otherwise (then the decodes first, then the chunks in order)."""
        parts = len(prefills) + len(decode_ctx)
        tokens = sum(c for c, _ in prefills) + len(decode_ctx)
        sampled = parts if num_sampled is None else num_sampled
        ctx = (list(decode_ctx) + [k + c for c, k in prefills])[:sampled]
        return cls(tokens, parts, list(prefills), list(decode_ctx), sampled, meta_ints, ctx)

    @classmethod
    def from_plan(cls, plan, block_size: int = 16) -> "BatchShape":
        """From a batch plan (anything with ``.parts`` of ``token_ids``, ``start`` and ``sample``;
        :class:`pp_sarathi.scheduler.batch.BatchPlan`). ``block_size``: the runtime cache's, to
        size the block tables sent with the plan."""
        total, prefills, decodes, sampled, ends, sampled_ctx = 0, [], [], 0, [], []
        for p in plan.parts:
            n = len(p.token_ids)
            total += n
            end = p.start + n
            if n == 1:
                decodes.append(end)
            else:
                prefills.append((n, p.start))
            if p.sample:
                sampled += 1
                sampled_ctx.append(end)
            ends.append(end)
        return cls(total, len(plan.parts), prefills, decodes, sampled, plan_meta_ints(ends, block_size),
                   sampled_ctx)
