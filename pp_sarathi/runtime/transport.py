"""The transport between stages: batch plans on the wire and point-to-point messages over
torch.distributed (gloo or NCCL).

Every message sends its shape first (gloo aborts the process on a size mismatch):
a fixed 3-int header ``[plan_id, meta_len, num_tokens]`` then the plan metadata, then the
hidden states. Results travel back from the last stage to rank 0 the same way. A plan travels
as a flat int64 tensor every stage can decode (token ids stay on rank 0).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..cost.messages import HOP_HEADER_INTS, RESULT_HEADER_INTS
from ..cost.messages import PART_FIELDS as _FIELDS
from ..scheduler.batch import SampleResult, ScheduledPart


STOP = -1  # a plan id that tells stages to finish
HEARTBEAT = -2  # a plan id that only says the driver is alive (stages pass it on)


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


class StageLink:
    """The sends and receives of one rank; tensors cross on ``device`` (CPU for gloo)."""

    def __init__(self, rank: int, world: int, hidden_size: int, dtype: torch.dtype, device: torch.device,
                 logprobs: int = 0):
        self.rank, self.world = rank, world
        self.prev = rank - 1 if rank > 0 else None
        self.next = rank + 1 if rank + 1 < world else None
        self.hidden_size, self.dtype, self.device = hidden_size, dtype, device
        self.logprobs = logprobs
        self._pending: list = []  # async sends still in progress, with their tensors
        self._hidden_buf = torch.empty(0, dtype=dtype, device=device)

    # ---- activations forward -------------------------------------------------------
    def send_activations(self, plan_id: int, parts: list[ScheduledPart], hidden: torch.Tensor) -> None:
        meta = encode_plan(plan_id, parts).to(self.device)
        header = torch.tensor([plan_id, meta.numel(), hidden.shape[0]], dtype=torch.long, device=self.device)
        hidden = hidden.contiguous()
        self._isend([header, meta, hidden], self.next)

    def send_stop(self) -> None:
        self._isend([torch.tensor([STOP, 0, 0], dtype=torch.long, device=self.device)], self.next)

    def send_heartbeat(self) -> None:
        """Tell the next stage the driver lives, so an idle stage's receive never times out."""
        self._isend([torch.tensor([HEARTBEAT, 0, 0], dtype=torch.long, device=self.device)], self.next)

    def recv_activations(self) -> tuple[int, list[ScheduledPart] | None, torch.Tensor | None]:
        header = torch.empty(HOP_HEADER_INTS, dtype=torch.long, device=self.device)
        dist.recv(header, self.prev)
        plan_id, meta_len, num_tokens = header.tolist()
        if plan_id in (STOP, HEARTBEAT):
            return plan_id, None, None
        meta = torch.empty(meta_len, dtype=torch.long, device=self.device)
        dist.recv(meta, self.prev)
        need = num_tokens * self.hidden_size
        if self._hidden_buf.numel() < need:
            self._hidden_buf = torch.empty(need, dtype=self.dtype, device=self.device)
        hidden = self._hidden_buf[:need].view(num_tokens, self.hidden_size)
        dist.recv(hidden, self.prev)
        _, parts = decode_plan(meta.cpu())
        return plan_id, parts, hidden

    # ---- sampled tokens back to rank 0 ----------------------------------------------
    def send_results(self, plan_id: int, results: list[SampleResult | None]) -> None:
        k = self.logprobs
        tokens = torch.tensor([r.token_id if r else -1 for r in results], dtype=torch.long)
        msgs = [torch.tensor([plan_id, len(results)], dtype=torch.long), tokens]
        if k:
            ids = torch.full((len(results), k + 1), -1, dtype=torch.long)
            vals = torch.zeros((len(results), k + 1), dtype=torch.float64)
            for i, r in enumerate(results):
                if r and r.logprobs:
                    items = list(r.logprobs.items())
                    ids[i, :len(items)] = torch.tensor([t for t, _ in items])
                    vals[i, :len(items)] = torch.tensor([v for _, v in items], dtype=torch.float64)
            msgs += [ids, vals]
        self._isend([m.to(self.device) for m in msgs], 0)

    def recv_results(self, src: int) -> tuple[int, list[SampleResult | None]]:
        header = torch.empty(RESULT_HEADER_INTS, dtype=torch.long, device=self.device)
        dist.recv(header, src)
        plan_id, n = header.tolist()
        tokens = torch.empty(n, dtype=torch.long, device=self.device)
        dist.recv(tokens, src)
        results: list[SampleResult | None] = [None if t < 0 else SampleResult(t) for t in tokens.tolist()]
        if self.logprobs:
            ids = torch.empty((n, self.logprobs + 1), dtype=torch.long, device=self.device)
            vals = torch.empty((n, self.logprobs + 1), dtype=torch.float64, device=self.device)
            dist.recv(ids, src)
            dist.recv(vals, src)
            for r, row_ids, row_vals in zip(results, ids.tolist(), vals.tolist()):
                if r is not None:
                    r.logprobs = {t: v for t, v in zip(row_ids, row_vals) if t >= 0}
        return plan_id, results

    # ---- async send bookkeeping -----------------------------------------------------
    def _isend(self, tensors: list[torch.Tensor], dst: int) -> None:
        for t in tensors:
            self._pending.append((dist.isend(t, dst), t))
        # Completed sends release their tensors; keep the list short.
        self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]

    def flush(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()
