"""Scheduler bookkeeping shared by every policy: arrivals, admission, KV blocks, preemption,
micro-batches in flight, finishing. A policy only decides what goes into the next batch."""
from __future__ import annotations

import math
from collections import deque

from ..config import SchedulerConfig
from ..workload.request import Request
from .batch import BatchPlan, SampleResult, ScheduledPart
from .block_manager import BlockManager
from .sequence import Sequence, SeqStatus


class Scheduler:
    """Base class; subclasses implement :meth:`build` with the policy's batch shape.

    Several micro-batches may be in flight (pipeline parallelism): a request that is in an
    unfinished batch is not schedulable (except for its next prompt chunk where the policy sets
    ``chunks_in_flight``), and ``max_batch_size`` bounds the admitted requests over all of them.
    Each micro-batch takes at most ``ceil(max_batch_size / max_inflight)`` requests so that the
    pipeline can hold ``max_inflight`` non-empty micro-batches, plus up to ``parts_past_cap``
    prompt chunks a policy may add beyond it (``planner.fill_prefills``).
    """

    name = "base"
    #: Prompt chunks a micro-batch may take beyond the request cap (sarathi_uniform's top-up).
    parts_past_cap = 0
    #: A prompt's next chunk may join a micro-batch while its earlier chunk is in flight:
    #: stages run micro-batches in the order they were scheduled, so the earlier chunk's K/V is
    #: in every stage's cache before the later chunk reads it there. Only a part that samples
    #: (a prompt's last chunk, a decode) must come back before the request's next part.
    chunks_in_flight = False
    #: Reserve KV for the whole request (prompt + max_tokens) on admission instead of on demand.
    reserve_full_request = False
    #: Set when a tokenizer is known (model.text_output.TextOutput): stop strings end requests
    #: and finished sequences get their ``text``. Duck-typed so the scheduler stays torch-free.
    text = None

    def __init__(self, cfg: SchedulerConfig, blocks: BlockManager, max_model_len: int,
                 max_inflight: int = 1, eos_token_ids: tuple[int, ...] = (), ignore_eos: bool = False,
                 predictor=None):
        self.cfg = cfg
        # Stage-time predictor (pp_sarathi.cost.plan.PlanCost, duck-typed): when set, every plan
        # carries its predicted stage times; sarathi_uniform plans with it.
        self.predictor = predictor
        self.blocks = blocks
        self.max_model_len = max_model_len
        self.max_inflight = max(1, max_inflight)
        self.per_batch_cap = math.ceil(cfg.max_batch_size / self.max_inflight)
        self.eos = () if ignore_eos else tuple(eos_token_ids)
        self.seqs: dict[int, Sequence] = {}
        self.pending: deque[Sequence] = deque()  # by arrival time
        self.waiting: deque[Sequence] = deque()  # arrived, no KV; preempted ones go first
        self.running: list[Sequence] = []  # admitted, in admission order
        self._next_batch_id = 0
        self._num_unfinished = 0

    # ---- requests in -----------------------------------------------------------------
    def add_requests(self, requests: list[Request], vocab_size: int | None = None) -> None:
        for req in sorted(requests, key=lambda r: (r.arrival_time, r.index)):
            seq = Sequence(req)
            self.seqs[req.index] = seq
            reason = req.error or self._reject_reason(req, vocab_size)
            if reason:
                seq.status = SeqStatus.FINISHED
                seq.finish_reason = f"error: {reason}"
                seq.finish_time = req.arrival_time
                if self.text is not None:
                    seq.text = ""
                continue
            self.pending.append(seq)
            self._num_unfinished += 1

    def _reject_reason(self, req: Request, vocab_size: int | None) -> str | None:
        n = len(req.prompt_token_ids)
        if n == 0:
            return "empty prompt"
        if n >= self.max_model_len:
            return f"prompt of {n} tokens does not fit the model's context of {self.max_model_len}"
        if vocab_size is not None and max(req.prompt_token_ids) >= vocab_size:
            return f"prompt token id {max(req.prompt_token_ids)} outside the vocabulary of {vocab_size}"
        longest = min(n + req.max_tokens, self.max_model_len)
        if self.blocks.blocks_for(longest) > self.blocks.num_blocks:
            return (f"needs {self.blocks.blocks_for(longest)} KV blocks but the cache has "
                    f"{self.blocks.num_blocks} (raise cache.num_blocks)")
        return None

    def admit_arrivals(self, now: float) -> None:
        while self.pending and self.pending[0].arrival_time <= now:
            seq = self.pending.popleft()
            seq.status = SeqStatus.WAITING
            self.waiting.append(seq)

    def next_arrival(self) -> float | None:
        return self.pending[0].arrival_time if self.pending else None

    @property
    def has_unfinished(self) -> bool:
        return self._num_unfinished > 0

    # ---- the policy hook -------------------------------------------------------------
    def build(self, batch: "BatchBuilder") -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def schedule(self, now: float) -> BatchPlan | None:
        """The next micro-batch, or None when nothing is schedulable right now."""
        self.admit_arrivals(now)
        builder = BatchBuilder(self, now)
        self.build(builder)
        if not builder.parts:
            return None
        plan = BatchPlan(id=self._next_batch_id, parts=builder.parts, scheduled_at=now,
                         target_s=builder.target_s)
        if self.predictor is not None:
            plan.predicted_stage_s = self.predict(plan)
        self._next_batch_id += 1
        for part in plan.parts:
            seq = self.seqs[part.seq_index]
            seq.in_flight += 1
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
        return plan

    def predict(self, plan: BatchPlan) -> list[float]:
        """Predicted compute seconds of ``plan`` on every stage."""
        return self.predictor.stage_seconds(*plan.cost_shape())

    # ---- views the policies use ------------------------------------------------------
    def schedulable_decodes(self) -> list[Sequence]:
        return [s for s in self.running if not s.in_flight and not s.is_prefill]

    def schedulable_prefills(self) -> list[Sequence]:
        """Admitted requests with prompt tokens left (partial prefills), oldest first."""
        if self.chunks_in_flight:
            return [s for s in self.running if s.is_prefill and s.num_unscheduled > 0]
        return [s for s in self.running if not s.in_flight and s.is_prefill]

    # ---- results back ----------------------------------------------------------------
    def on_batch_done(self, plan: BatchPlan, results: list[SampleResult | None], now: float) -> list[Sequence]:
        """Apply a finished micro-batch; returns the sequences that finished."""
        done = []
        for part, res in zip(plan.parts, results):
            seq = self.seqs[part.seq_index]
            seq.in_flight -= 1
            if seq.status is not SeqStatus.RUNNING:
                continue
            seq.num_computed = part.start + part.num_tokens
            seq.max_computed = max(seq.max_computed, seq.num_computed)
            if not part.sample:
                continue
            if res is None:
                raise RuntimeError(f"batch {plan.id}: no sampled token for request {seq.request.id}")
            seq.output_token_ids.append(res.token_id)
            if res.logprobs is not None:
                seq.logprobs.append(res.logprobs)
            seq.token_times.append(now)
            if seq.first_token_time is None:
                seq.first_token_time = now
            reason = None
            if res.token_id in self.eos and not seq.request.ignore_eos:
                reason = "stop"
            elif (self.text is not None and not seq.request.ignore_eos
                  and self.text.stop_hit(seq.output_token_ids)):
                reason = "stop"
            elif len(seq.output_token_ids) >= seq.request.max_tokens or seq.num_tokens >= self.max_model_len:
                reason = "length"
            if reason:
                self._finish(seq, reason, now)
                done.append(seq)
        return done

    def _finish(self, seq: Sequence, reason: str, now: float) -> None:
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        seq.finish_time = now
        if self.text is not None:
            seq.text = self.text.final_text(seq.output_token_ids, reason)
        self.blocks.free(seq)
        self.running.remove(seq)
        self._num_unfinished -= 1

    def abort_all(self, reason: str, now: float) -> None:
        """End every unfinished request with ``finish_reason = "error: <reason>"``."""
        for seq in self.seqs.values():
            if not seq.is_finished:
                seq.status = SeqStatus.FINISHED
                seq.finish_reason = f"error: {reason}"
                seq.finish_time = now
                if self.text is not None:
                    seq.text = self.text.final_text(seq.output_token_ids, seq.finish_reason)
        self.running.clear()
        self.waiting.clear()
        self.pending.clear()
        self._num_unfinished = 0

    # ---- admission and memory --------------------------------------------------------
    def max_request_len(self, seq: Sequence) -> int:
        """Tokens ``seq`` can reach: prompt plus every output token, capped by the model."""
        return min(len(seq.request.prompt_token_ids) + seq.request.max_tokens, self.max_model_len)

    def admit(self, seq: Sequence, now: float) -> None:
        self.waiting.remove(seq)
        if self.reserve_full_request:
            self.blocks.grow(seq, self.max_request_len(seq))
        if seq.preempted_at is not None:
            seq.preempted_s += now - seq.preempted_at
            seq.preempted_at = None
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)

    def ensure_blocks(self, seq: Sequence, num_tokens: int, protect: set[int], now: float) -> bool:
        """Make ``seq`` hold ``num_tokens`` tokens, preempting (recompute) the newest idle requests
        if memory runs out. Returns False when that is not possible right now."""
        if self.blocks.extra_blocks(seq, num_tokens) == 0:
            return True  # the common decode step: its last block still has room
        while not self.blocks.can_hold(seq, num_tokens):
            victim = next((s for s in reversed(self.running)
                           if s is not seq and not s.in_flight and s.index not in protect), None)
            if victim is None:
                return False
            self.preempt(victim, now)
        self.blocks.grow(seq, num_tokens)
        return True

    def preempt(self, seq: Sequence, now: float) -> None:
        self.blocks.free(seq)
        seq.num_computed = seq.num_scheduled = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        seq.preempted_at = now
        self.running.remove(seq)
        self.waiting.appendleft(seq)


class BatchBuilder:
    """Collects the parts of one micro-batch while a policy decides."""

    def __init__(self, sched: Scheduler, now: float):
        self.sched = sched
        self.now = now
        self.parts: list[ScheduledPart] = []
        self._members: set[int] = set()
        self.target_s: float | None = None  # the target stage time a planner aimed at
        self.extra_room = 0  # parts a planner may add beyond the request cap (see fill_prefills)
        # Requests a planner leaves for the next micro-batch: not preempted to make room in this one.
        self.keep: set[int] = set()

    @property
    def num_tokens(self) -> int:
        return sum(p.num_tokens for p in self.parts)

    @property
    def num_requests(self) -> int:
        return len(self._members)

    @property
    def room(self) -> int:
        """How many more requests this micro-batch may take."""
        return self.sched.per_batch_cap + self.extra_room - len(self._members)

    def add(self, seq: Sequence, num_tokens: int | None = None) -> int:
        """Add up to ``num_tokens`` of ``seq``'s unscheduled tokens (all if None); returns how many."""
        if self.room <= 0 or seq.index in self._members or seq.status is not SeqStatus.RUNNING:
            return 0  # not running: preempted earlier while this batch was being built
        n = seq.num_unscheduled if num_tokens is None else min(num_tokens, seq.num_unscheduled)
        if n <= 0:
            return 0
        start = seq.num_scheduled
        if not self.sched.ensure_blocks(seq, start + n, self._members | self.keep, self.now):
            return 0
        is_prefill = seq.is_prefill
        sample = start + n == seq.num_tokens
        self.parts.append(ScheduledPart(
            seq_index=seq.index, start=start, token_ids=seq.token_ids(start, start + n),
            block_table=list(seq.block_table), is_prefill=is_prefill, sample=sample,
            output_index=len(seq.output_token_ids)))
        seq.num_scheduled = start + n
        self._members.add(seq.index)
        return n

    def add_new(self, num_tokens: int | None = None) -> int:
        """Admit the first waiting request and add up to ``num_tokens`` of it (all if None).

        Returns 0, admitting nothing, when batch room or free KV blocks do not allow it: new
        requests never preempt running ones.
        """
        sched = self.sched
        if self.room <= 0 or not sched.waiting or len(sched.running) >= sched.cfg.max_batch_size:
            return 0
        seq = sched.waiting[0]
        n = seq.num_unscheduled if num_tokens is None else min(num_tokens, seq.num_unscheduled)
        need = sched.max_request_len(seq) if sched.reserve_full_request else n
        if n <= 0 or not sched.blocks.can_hold(seq, need):
            return 0
        sched.admit(seq, self.now)
        return self.add(seq, n)
