"""The driver: rank 0's scheduler side of a run.

It schedules micro-batches, hands them to stage 0, applies the sampled tokens that come back
and writes finished requests, with up to ``pp`` micro-batches in flight. In a pipeline, stage 0
runs on its own thread (:class:`FirstStage`) fed through a queue, so the driver's work overlaps
stage-0 compute and stage 0 has a receive-wait like every other stage. Every stretch of driver
work is recorded on its own track (:class:`DriverSpan`), never as stage time.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..metrics.records import BatchRecord, DriverSpan
from ..metrics.timing import StageClock, StageTimeline
from ..scheduler import BatchPlan, SampleResult, Scheduler, Sequence
from .executor import StageExecutor
from .cores import pin_compute_thread
from .transport import StageLink


class Pipeline(Protocol):
    num_stages: int

    def submit(self, plan: BatchPlan) -> None: ...

    def collect(self) -> list[SampleResult | None]: ...

    def idle_until(self, t: float) -> None: ...


@dataclass
class StopRequest:
    """Set (from a signal handler) to end a run early: nothing new is scheduled, in-flight
    micro-batches come back, the rest end with ``finish_reason = "error: interrupted by ..."``."""

    reason: str | None = None


@dataclass
class DriverLog:
    """What the driver saw, appended as it happens (a failed run keeps what came before)."""

    batches: list[BatchRecord] = field(default_factory=list)
    spans: list[DriverSpan] = field(default_factory=list)


def drive(scheduler: Scheduler, pipeline: Pipeline, clock: StageClock,
          on_finished: Callable[[list[Sequence]], None] | None = None,
          log: DriverLog | None = None, stop: StopRequest | None = None) -> list[BatchRecord]:
    """Run until every request has finished; returns the micro-batches in completion order."""
    log = log if log is not None else DriverLog()
    spans, batches = log.spans, log.batches
    inflight: deque[BatchPlan] = deque()
    unwritten: list[Sequence] = []
    while scheduler.has_unfinished:
        stopping = stop is not None and stop.reason is not None
        while not stopping and len(inflight) < pipeline.num_stages:
            t0 = clock.now()
            plan = scheduler.schedule(t0)
            if plan is None:
                break
            plan.scheduled_at = t1 = clock.now()  # ready for stage 0 from here on
            pipeline.submit(plan)
            inflight.append(plan)
            spans.append(DriverSpan("schedule", t0, t1))
        if unwritten and on_finished is not None:
            # Off the critical path: the next micro-batch is already on its way.
            t0 = clock.now()
            on_finished(unwritten)
            spans.append(DriverSpan("output", t0, clock.now()))
        unwritten = []
        if inflight:
            plan = inflight.popleft()
            results = pipeline.collect()
            done_at = clock.now()
            unwritten = scheduler.on_batch_done(plan, results, done_at)
            batches.append(BatchRecord(plan.id, plan.kind, len(plan.parts), plan.num_prefill_tokens,
                                       plan.num_decode_tokens, plan.scheduled_at, done_at,
                                       [p.seq_index for p in plan.parts], plan.predicted_stage_s,
                                       plan.target_s))
            spans.append(DriverSpan("results", done_at, clock.now()))
            continue
        if stopping:
            break
        nxt = scheduler.next_arrival()
        if nxt is None:
            # Nothing runs, nothing will arrive: the rest can never be scheduled.
            scheduler.abort_all("could not be scheduled (KV cache or batch limits)", clock.now())
            break
        pipeline.idle_until(nxt)
    if stop is not None and stop.reason is not None and scheduler.has_unfinished:
        scheduler.abort_all(f"interrupted by {stop.reason}", clock.now())
    if unwritten and on_finished is not None:
        on_finished(unwritten)
    return batches


def _observe(observer, plan: BatchPlan, start, end, clock) -> None:
    """Hand stage 0's measured compute of ``plan`` to the predictor's online refinement (host
    clocks only: reading a CUDA event here would synchronise the hot path)."""
    if observer is not None and plan.predicted_stage_s and not getattr(clock, "cuda", False):
        observer(plan.predicted_stage_s[0], clock.seconds(end) - clock.seconds(start), *plan.cost_shape())


class LocalPipeline:
    """pp=1: every layer in this process; submit computes at once, collect hands results back.
    ``observer(predicted_s, measured_s, prefills, decode_ctx, num_sampled)``: told every
    micro-batch's compute time and shape."""

    num_stages = 1

    def __init__(self, executor: StageExecutor, clock: StageClock, observer=None):
        self.executor, self.clock, self.observer = executor, clock, observer
        self.timeline = StageTimeline(clock, 0)
        self._done: deque[list[SampleResult | None]] = deque()

    def submit(self, plan: BatchPlan) -> None:
        start = self.clock.stamp()
        results = self.executor.step(plan.parts)
        end = self.clock.stamp()
        self.timeline.add(plan.id, start, start, start, end, end, end)
        _observe(self.observer, plan, start, end, self.clock)
        self._done.append(results)

    def collect(self) -> list[SampleResult | None]:
        return self._done.popleft()

    def idle_until(self, t: float) -> None:
        self.clock.sleep_until(t)


_QUIT = object()
_HEARTBEAT = object()


class FirstStage:
    """Stage 0 of a pipeline on its own thread of rank 0, fed by the driver through a queue.

    Sampled tokens come back to the driver thread directly from the last stage; only this
    thread sends to stage 1. ``observer(predicted_s, measured_s, prefills, decode_ctx,
    num_sampled)``: told every micro-batch's stage-0 compute time and shape."""

    def __init__(self, executor: StageExecutor, link: StageLink, timeline: StageTimeline, observer=None):
        self.executor, self.link, self.timeline, self.observer = executor, link, timeline, observer
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pp_sarathi-stage-0", daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        self._queue.put(item)

    def _run(self) -> None:
        clock, link = self.timeline.clock, self.link
        try:
            pin_compute_thread()  # this thread's torch ops run on its own OpenMP team
            if self.executor.device.type == "cuda":  # a new thread starts on the default device
                import torch
                torch.cuda.set_device(self.executor.device)
            r0 = None
            while True:
                r0 = r0 if r0 is not None else clock.stamp()
                item = self._queue.get()
                if item is _QUIT:
                    break
                if item is _HEARTBEAT:
                    link.send_heartbeat()
                    continue
                r1 = clock.stamp()
                hidden = self.executor.step(item.parts)
                c1 = clock.stamp()
                link.send_activations(item.id, item.parts, hidden)
                self.timeline.add(item.id, r0, r1, r1, c1, c1, clock.stamp())
                _observe(self.observer, item, r1, c1, clock)
                r0 = None
        except BaseException as exc:  # surfaced to the driver on its next collect
            self.error = exc

    def close(self, timeout: float) -> None:
        self._queue.put(_QUIT)
        self._thread.join(timeout)


class PipelineFront:
    """Rank 0's view of a pipeline: plans go to :class:`FirstStage`, tokens come back from the
    last rank. While no micro-batch is in flight it sends heartbeats down the pipeline, so an
    idle stage never mistakes a quiet workload for a dead driver."""

    def __init__(self, executor: StageExecutor, link: StageLink, timeline: StageTimeline,
                 heartbeat_s: float, observer=None):
        self.link, self.clock = link, timeline.clock
        self.num_stages = link.world
        self.heartbeat_s = heartbeat_s
        self.first = FirstStage(executor, link, timeline, observer)
        self._order: deque[int] = deque()

    def submit(self, plan: BatchPlan) -> None:
        self._check()
        self._order.append(plan.id)
        self.first.put(plan)

    def collect(self) -> list[SampleResult | None]:
        self._check()
        plan_id, results = self.link.recv_results(self.link.world - 1)
        expected = self._order.popleft()
        if plan_id != expected:
            raise RuntimeError(f"pipeline returned batch {plan_id}, expected {expected}")
        return results

    def idle_until(self, t: float) -> None:
        while True:
            left = t - self.clock.now()
            if left <= 0:
                return
            time.sleep(min(left, self.heartbeat_s))
            if t - self.clock.now() > 0:
                self._check()
                self.first.put(_HEARTBEAT)

    def close(self, timeout: float) -> None:
        self.first.close(timeout)

    def _check(self) -> None:
        if self.first.error is not None:
            raise RuntimeError(f"stage 0 failed: {self.first.error}") from self.first.error
