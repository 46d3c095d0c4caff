"""The rank-0 loop: scheduler -> stages -> sampled tokens -> scheduler, with up to ``pp``
micro-batches in flight."""
from __future__ import annotations

from collections import deque
from typing import Callable, Protocol

from ..metrics.records import BatchRecord
from ..metrics.timing import StageClock
from ..scheduler import BatchPlan, SampleResult, Scheduler, Sequence


class Pipeline(Protocol):
    num_stages: int

    def submit(self, plan: BatchPlan) -> None: ...

    def collect(self) -> list[SampleResult | None]: ...


def drive(scheduler: Scheduler, pipeline: Pipeline, clock: StageClock,
          on_finished: Callable[[list[Sequence]], None] | None = None) -> list[BatchRecord]:
    """Run until every request has finished; returns the micro-batches in completion order."""
    inflight: deque[BatchPlan] = deque()
    records: list[BatchRecord] = []
    while scheduler.has_unfinished:
        while len(inflight) < pipeline.num_stages:
            plan = scheduler.schedule(clock.now())
            if plan is None:
                break
            pipeline.submit(plan)
            inflight.append(plan)
        if inflight:
            plan = inflight.popleft()
            results = pipeline.collect()
            done_at = clock.now()
            finished = scheduler.on_batch_done(plan, results, done_at)
            records.append(BatchRecord(plan.id, plan.kind, len(plan.parts), plan.num_prefill_tokens,
                                       plan.num_decode_tokens, plan.scheduled_at, done_at,
                                       [p.seq_index for p in plan.parts]))
            if on_finished is not None and finished:
                on_finished(finished)
            continue
        nxt = scheduler.next_arrival()
        if nxt is None:
            # Nothing runs, nothing will arrive: the rest can never be scheduled.
            scheduler.abort_all("could not be scheduled (KV cache or batch limits)", clock.now())
            break
        clock.sleep_until(nxt)
    return records
