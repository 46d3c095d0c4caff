"""The six batching policies. Each is only the shape of a batch; bookkeeping is in base.py."""
from __future__ import annotations

from .base import BatchBuilder, Scheduler
from .planner import TargetRule, decodes_to_take, fill_prefills


class OrcaScheduler(Scheduler):
    """Iteration-level batching: every schedulable decode plus whole prompts of new requests,
    with no token cap. KV for the whole request is reserved on admission (as Orca does)."""

    name = "orca"
    reserve_full_request = True

    def build(self, b: BatchBuilder) -> None:
        for seq in self.schedulable_decodes():
            b.add(seq)
        for seq in self.schedulable_prefills():  # only after a preemption; kept whole
            b.add(seq)
        while b.add_new():
            pass


class VLLMScheduler(Scheduler):
    """Prefill-prioritised: a prefill-only batch of whole prompts under the token budget
    whenever requests wait and fit, else a decode-only batch. A prompt longer than the budget
    runs alone (otherwise it could never run)."""

    name = "vllm"

    def build(self, b: BatchBuilder) -> None:
        budget = self.cfg.chunk_size
        for seq in self.schedulable_prefills():
            if b.parts and b.num_tokens + seq.num_unscheduled > budget:
                break
            b.add(seq)
        while self.waiting and not (b.parts and b.num_tokens + self.waiting[0].num_unscheduled > budget):
            if not b.add_new():
                break
        if b.parts:
            return
        for seq in self.schedulable_decodes():
            b.add(seq)


class FasterTransformerScheduler(Scheduler):
    """Request-level batching: a batch of requests is admitted together only once the previous
    one has fully drained; prompts are prefilled whole, then the batch decodes to the end."""

    name = "ft"
    reserve_full_request = True

    def build(self, b: BatchBuilder) -> None:
        if not self.running:
            while (len(self.running) < self.cfg.max_batch_size and self.waiting
                   and self.blocks.can_hold(self.waiting[0], self.max_request_len(self.waiting[0]))):
                self.admit(self.waiting[0], b.now)
        prefills = self.schedulable_prefills()
        for seq in prefills:
            b.add(seq)
        if prefills or any(s.is_prefill for s in self.running):
            return  # the whole batch is prefilled before anyone decodes
        for seq in self.schedulable_decodes():
            b.add(seq)


class SarathiScheduler(Scheduler):
    """Decode-maximal batching (SARATHI): every schedulable decode plus ONE prefill chunk that
    fills the token budget, chunk = chunk_size - decodes, with chunk + decodes rounded down to
    a multiple of ``tile_size``."""

    name = "sarathi"

    def build(self, b: BatchBuilder) -> None:
        for seq in self.schedulable_decodes()[: self.cfg.chunk_size]:
            b.add(seq)
        chunk = self.cfg.chunk_size - b.num_tokens
        if chunk <= 0:
            return
        partial = self.schedulable_prefills()
        if partial:
            b.add(partial[0], self._tile(b.num_tokens, chunk, partial[0].num_unscheduled))
        elif self.waiting:
            b.add_new(self._tile(b.num_tokens, chunk, self.waiting[0].num_unscheduled))

    def _tile(self, decodes: int, chunk: int, left: int) -> int:
        """Round decodes + chunk down to a tile multiple when that leaves a non-empty chunk;
        the last, short chunk of a prompt (``left <= chunk``) is left as it is."""
        tile = self.cfg.tile_size
        if left <= chunk:
            return left
        if tile <= 1:
            return chunk
        rounded = ((decodes + chunk) // tile) * tile - decodes
        return rounded if rounded > 0 else chunk


class SarathiServeScheduler(Scheduler):
    """Stall-free batching (Sarathi-Serve): decodes first, then ongoing (partial) prefills, then
    new prefills, as many chunks as fit under the token budget."""

    name = "sarathi_serve"

    def build(self, b: BatchBuilder) -> None:
        budget = self.cfg.chunk_size
        for seq in self.schedulable_decodes()[:budget]:
            b.add(seq)
        for seq in self.schedulable_prefills():
            left = budget - b.num_tokens
            if left <= 0:
                return
            b.add(seq, left)
        while b.num_tokens < budget and b.add_new(budget - b.num_tokens):
            pass


class SarathiUniformScheduler(Scheduler):
    """Compute-uniform hybrid batches: decodes first (leaving a request slot for prompt work,
    :func:`~pp_sarathi.scheduler.planner.decodes_to_take`), then prefill tokens (partial
    prefills, with ``scheduler.chunks_in_flight`` a prompt's next chunk even while its earlier
    one is in flight, then new requests, across prompt boundaries) until the micro-batch's
    predicted stage time reaches a target T (:class:`~pp_sarathi.scheduler.planner.TargetRule`:
    chosen online, or ``target_ms``), tile-aligned. Needs a stage-time predictor."""

    name = "sarathi_uniform"
    parts_past_cap = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.predictor is None:
            raise ValueError("scheduler sarathi_uniform needs a stage-time predictor (make_scheduler(predictor=...))")
        self.chunks_in_flight = self.cfg.chunks_in_flight
        self.target = TargetRule(self.cfg.chunk_size, self.cfg.tile_size, self.max_inflight,
                                 self.cfg.max_batch_size, self.cfg.target_ms)

    def build(self, b: BatchBuilder) -> None:
        take, held = decodes_to_take(self)
        b.keep = {s.index for s in held}
        for seq in take:
            b.add(seq)
        b.target_s = self.target(self.running, self.waiting, self.predictor, not self.pending)
        fill_prefills(b, self.predictor, b.target_s, self.cfg.tile_size)


POLICIES: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (OrcaScheduler, VLLMScheduler, FasterTransformerScheduler,
                              SarathiScheduler, SarathiServeScheduler, SarathiUniformScheduler)
}
