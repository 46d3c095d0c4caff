"""The transport between stages: batch plans on the wire and point-to-point messages over
torch.distributed (gloo or NCCL).

Every message sends its shape first (gloo aborts the process on a size mismatch):
a fixed header ``[plan_id, meta_len, num_tokens, ring_seq]`` (``cost/messages.py``), then the
plan metadata, then the hidden states. Between stages on one host (gloo) the last two go
through the link's shared-memory ring instead (``shm_ring.py``, set up by ``ring_setup.py``) and
only the header crosses gloo, so ordering, STOP, heartbeats, receive timeouts and dead-peer
detection stay those of the gloo message; a hop too big for a slot takes the gloo path.
Results travel back from the last stage to rank 0 over gloo, in one fixed-size message with
the token ids inline. A plan travels as a flat int64 tensor every stage can decode (token ids
stay on rank 0).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..cost.messages import (HOP_HEADER_INTS, NO_RING, RESULT_HEADER_INTS, RESULT_INLINE_TOKENS,
                             RESULT_MESSAGE_INTS)
from ..cost.messages import PART_FIELDS as _FIELDS
from ..scheduler.batch import SampleResult, ScheduledPart
from .shm_ring import ShmRing


STOP = -1  # a plan id that tells stages to finish
MAX_PENDING_SENDS = 32  # tensors of unfinished sends a link keeps (a message is 1-4 tensors)
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
        self.elem_bytes = self._hidden_buf.element_size()
        # Shared-memory payload rings (ring_setup.connect_rings); None = payloads over gloo.
        self.ring_out: ShmRing | None = None
        self.ring_in: ShmRing | None = None
        self.ring_timeout_s = 60.0  # how long a send waits for the next stage to free a slot
        self._ring_sent = self._ring_recvd = 0  # hops through each ring so far (= next ring_seq)
        self.wire_hops = 0  # hops sent with their payload over gloo (no ring, or too big for a slot)

    def describe(self) -> dict | None:
        """How this rank's forward hops travelled (results.json ``transport.hops``); None on the
        last stage (it sends results to rank 0, always over the wire)."""
        if self.next is None:
            return None
        ring = self.ring_out
        return {"from": self.rank, "to": self.next, "path": "shm" if ring is not None else "wire",
                "slots": ring.slots if ring is not None else 0,
                "slot_bytes": ring.slot_bytes if ring is not None else 0,
                "ring_hops": self._ring_sent, "wire_hops": self.wire_hops,
                "ring_waits": ring.waits if ring is not None else 0}

    # ---- activations forward -------------------------------------------------------
    def send_activations(self, plan_id: int, parts: list[ScheduledPart], hidden: torch.Tensor) -> None:
        meta = encode_plan(plan_id, parts)
        hidden = hidden.contiguous()
        ring, n = self.ring_out, hidden.shape[0]
        if ring is not None and ring.fits(meta.numel(), n, self.hidden_size, self.elem_bytes):
            seq = self._ring_sent
            ring.wait_free(seq, self.ring_timeout_s)
            ring.write(seq, meta, hidden)
            self._ring_sent += 1
            self._isend([self._header(plan_id, meta.numel(), n, seq)], self.next)
            return
        self.wire_hops += 1
        self._isend([self._header(plan_id, meta.numel(), n, NO_RING), meta.to(self.device), hidden], self.next)

    def send_stop(self) -> None:
        self._isend([self._header(STOP)], self.next)

    def send_heartbeat(self) -> None:
        """Tell the next stage the driver lives, so an idle stage's receive never times out."""
        self._isend([self._header(HEARTBEAT)], self.next)

    def _header(self, plan_id: int, meta_len: int = 0, num_tokens: int = 0, ring_seq: int = NO_RING) -> torch.Tensor:
        return torch.tensor([plan_id, meta_len, num_tokens, ring_seq], dtype=torch.long, device=self.device)

    def recv_activations(self) -> tuple[int, list[ScheduledPart] | None, torch.Tensor | None]:
        header = torch.empty(HOP_HEADER_INTS, dtype=torch.long, device=self.device)
        dist.recv(header, self.prev)
        plan_id, meta_len, num_tokens, ring_seq = header.tolist()
        if plan_id in (STOP, HEARTBEAT):
            return plan_id, None, None
        need = num_tokens * self.hidden_size
        if self._hidden_buf.numel() < need:
            self._hidden_buf = torch.empty(need, dtype=self.dtype, device=self.device)
        # The hidden states live in this link's own buffer (valid until the next receive), never
        # in a ring slot the previous stage may overwrite: copying out costs ~10-50 us a hop.
        hidden = self._hidden_buf[:need].view(num_tokens, self.hidden_size)
        if ring_seq != NO_RING:
            if self.ring_in is None or ring_seq != self._ring_recvd:
                raise RuntimeError(f"stage {self.rank}: shared-memory hop {ring_seq} arrived, expected "
                                   f"{self._ring_recvd if self.ring_in is not None else 'none (no ring)'}")
            meta = self.ring_in.read(ring_seq, meta_len, hidden)
            self._ring_recvd += 1
        else:
            meta = torch.empty(meta_len, dtype=torch.long, device=self.device)
            dist.recv(meta, self.prev)
            dist.recv(hidden, self.prev)
        _, parts = decode_plan(meta.cpu())
        return plan_id, parts, hidden

    # ---- sampled tokens back to rank 0 ----------------------------------------------
    def send_results(self, plan_id: int, results: list[SampleResult | None]) -> None:
        k, n = self.logprobs, len(results)
        tokens = [r.token_id if r else -1 for r in results]
        inline = n <= RESULT_INLINE_TOKENS
        head = [plan_id, n] + (tokens if inline else [])
        msgs = [torch.tensor(head + [-1] * (RESULT_MESSAGE_INTS - len(head)), dtype=torch.long)]
        if not inline:
            msgs.append(torch.tensor(tokens, dtype=torch.long))
        if k:
            ids = torch.full((n, k + 1), -1, dtype=torch.long)
            vals = torch.zeros((n, k + 1), dtype=torch.float64)
            for i, r in enumerate(results):
                if r and r.logprobs:
                    items = list(r.logprobs.items())
                    ids[i, :len(items)] = torch.tensor([t for t, _ in items])
                    vals[i, :len(items)] = torch.tensor([v for _, v in items], dtype=torch.float64)
            msgs += [ids, vals]
        self._isend([m.to(self.device) for m in msgs], 0)

    def recv_results(self, src: int) -> tuple[int, list[SampleResult | None]]:
        message = torch.empty(RESULT_MESSAGE_INTS, dtype=torch.long, device=self.device)
        dist.recv(message, src)
        flat = message.tolist()
        plan_id, n = flat[:RESULT_HEADER_INTS]
        if n <= RESULT_INLINE_TOKENS:
            token_ids = flat[RESULT_HEADER_INTS:RESULT_HEADER_INTS + n]
        else:
            tokens = torch.empty(n, dtype=torch.long, device=self.device)
            dist.recv(tokens, src)
            token_ids = tokens.tolist()
        results: list[SampleResult | None] = [None if t < 0 else SampleResult(t) for t in token_ids]
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
        # A send's tensor must live until the send is done. gloo reports a send completed only
        # once it has been waited on, so the oldest ones are waited for (long done by then: at
        # most ``pp`` micro-batches are in flight) instead of piling up for the whole run.
        self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]
        while len(self._pending) > MAX_PENDING_SENDS:
            self._pending.pop(0)[0].wait()

    @property
    def pending_sends(self) -> int:
        """Sends whose tensors this link still holds."""
        return len(self._pending)

    def flush(self) -> None:
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()

    def close(self) -> None:
        """Unmap the shared-memory rings (their memory goes with the last mapping)."""
        for ring in (self.ring_out, self.ring_in):
            if ring is not None:
                ring.close()
        self.ring_out = self.ring_in = None
