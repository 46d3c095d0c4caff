"""Batch plans on the wire: a flat int64 tensor every stage can decode (token ids stay on rank 0)."""
from __future__ import annotations

import torch

from ..cost.messages import PART_FIELDS as _FIELDS
from ..scheduler.batch import ScheduledPart

STOP = -1  # a plan id that tells stages to finish


def encode_plan(plan_id: int, parts: list[ScheduledPart]) -> torch.Tensor:
    flat = [plan_id, len(parts)]
    for p in parts:
        flat += [p.seq_index, p.start, p.num_tokens, int(p.is_prefill), int(p.sample), p.output_index,
                 len(p.block_table)]
        flat += p.block_table
    return torch.tensor(flat, dtype=torch.long)


def decode_plan(t: torch.Tensor) -> tuple[int, list[ScheduledPart]]:
    flat = t.tolist()
    plan_id, n = flat[0], flat[1]
    parts, i = [], 2
    for _ in range(n):
        seq, start, ntok, pre, sample, out_idx, nb = flat[i:i + _FIELDS]
        i += _FIELDS
        parts.append(ScheduledPart(seq_index=seq, start=start, token_ids=[0] * ntok,
                                   block_table=flat[i:i + nb], is_prefill=bool(pre), sample=bool(sample),
                                   output_index=out_idx))
        i += nb
    return plan_id, parts
