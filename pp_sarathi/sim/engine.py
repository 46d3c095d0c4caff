"""The event engine: a virtual clock and a simulated pipeline that plug into the runtime's
own driver loop (:func:`pp_sarathi.runtime.driver.drive`).

Model of the runtime (runtime/driver.py and runtime/stage.py), one FIFO server per stage:

* rank 0 is the driver *and* stage 0: ``submit`` computes stage 0 and hands the activations
  to an asynchronous send (busy ``send`` for posting it); with ``driver_blocks_on_stage0``
  the driver's clock advances by that compute (as on the CPU runtime), otherwise submit
  returns at once (an asynchronous device queue).
* stage s > 0 posts its receive as soon as it has sent the previous micro-batch. With a
  measured transport (a profile's ``link_*`` rows: eager sends) the data arrives ``hop``
  after the upstream compute ends, and a stage that finds it already there takes ``recv``
  to take it in: ``recv_end = max(recv_start + recv, upstream compute_end + hop)``; without
  one (roofline, older profiles) the transfer starts once both the data and the receive are
  there: ``recv_end = max(recv_start, upstream compute_end) + hop``. Then it computes and is
  busy ``send`` passing the result on.
* the last stage returns the sampled tokens to rank 0; ``collect`` blocks the driver until
  ``last compute_end + return``.
* ``jitter`` > 0 (or a function of the modelled step time, as a profile measures it: short
  steps vary more): every stage's compute time of every micro-batch is drawn log-normally
  around the modelled (median) time, independently, from a seeded generator (it is what makes
  real pipelines idle more than constant step times would).
* ``stretch`` (:class:`TimeShare`): more stage threads than the host's cores (a CPU profile):
  a stage computing while others compute gets its share of the cores; ``run_simulation``
  re-simulates with the previous simulation's timeline until it settles.

Micro-batches go through every stage in submission order, so each event of micro-batch k
on stage s depends only on micro-batch k-1 on stage s and micro-batch k on stage s-1; the
engine processes events in that order, which is exact for this FIFO pipeline (no
priority queue needed, O(stages) per micro-batch).
"""
from __future__ import annotations

import bisect
import math
import random
from collections import deque
from typing import Callable

from ..metrics.records import StageRecord
from ..scheduler import BatchPlan, SampleResult
from ..cost import BatchShape, CostModel, StageTimes


class VirtualClock:
    """Drop-in for :class:`~pp_sarathi.metrics.timing.StageClock` whose time only moves when told."""

    cuda = False

    def __init__(self, start: float = 0.0):
        self.t = start

    def reset(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        if t > self.t:
            self.t = t

    def sleep_until(self, t: float) -> None:
        self.advance_to(t)

    def stamp(self) -> float:
        return self.t

    def seconds(self, stamp) -> float:
        return float(stamp)


class PipelineEngine:
    """Per-stage FIFO timeline; :meth:`push` places one micro-batch on every stage."""

    def __init__(self, num_stages: int, keep_records: bool = True, stretch=None):
        if num_stages < 1:
            raise ValueError("need at least one stage")
        self.num_stages = num_stages
        self.free = [0.0] * num_stages  # when each stage has sent its last micro-batch
        self.records: list[StageRecord] = []
        self.keep_records = keep_records
        # (start, work) -> how long ``work`` seconds of compute take from ``start`` (shared cores)
        self.stretch = stretch

    def push(self, batch_id: int, ready: float, times: StageTimes) -> tuple[float, float]:
        """Micro-batch ``batch_id`` is handed to stage 0 at ``ready``.

        Returns (when stage 0 is done with it = when a blocking driver gets control back,
        when its sampled tokens reach rank 0).
        """
        free, comp, hops = self.free, times.compute, times.transfer
        send = times.send  # empty: sends cost the sender nothing
        recv = times.recv  # measured receive costs: eager sends; none: a rendezvous per hop
        rec = self.records.append if self.keep_records else None
        stretch = self.stretch
        start = ready if ready > free[0] else free[0]
        end = start + (comp[0] if stretch is None else stretch(start, comp[0]))
        sent = end + send[0] if send else end
        free[0] = sent
        if rec:
            rec(StageRecord(0, batch_id, start, start, start, end, end, sent))
        stage0_done = sent
        avail = end
        for s in range(1, self.num_stages):
            r0 = free[s]
            if recv:
                own = r0 + recv[s]  # the data is already there: taking it in
                arrive = avail + hops[s - 1]  # waiting for the upstream stage
                r1 = own if own > arrive else arrive
            else:  # the transfer starts once both the data and the receive are there
                r1 = (r0 if r0 > avail else avail) + hops[s - 1]
            c1 = r1 + (comp[s] if stretch is None else stretch(r1, comp[s]))
            free[s] = c1 + send[s] if send else c1
            avail = c1
            if rec:
                rec(StageRecord(s, batch_id, r0, r1, r1, c1, c1, free[s]))
        return stage0_done, avail + times.ret


class TimeShare:
    """Stages whose threads outnumber the host's cores share them: a stage computing while n
    stages compute runs at speed ``min(1, cores / (threads * n))``. ``n(t)`` comes from the
    compute intervals of a previous simulation of the same run (``records``);
    :meth:`stretch` turns ``work`` seconds at full speed starting at ``start`` into a duration.
    """

    def __init__(self, records: list[StageRecord], cores: int, threads: int = 1):
        ev: dict[float, int] = {}
        for r in records:
            if r.compute_end > r.compute_start:
                ev[r.compute_start] = ev.get(r.compute_start, 0) + 1
                ev[r.compute_end] = ev.get(r.compute_end, 0) - 1
        self.xs: list[float] = []  # breakpoints
        self.speed: list[float] = []  # speed from xs[i] to xs[i + 1] (1 after the last)
        self.cap: list[float] = []  # full-speed seconds done from xs[0] to xs[i]
        n, done = 0, 0.0
        for x in sorted(ev):
            if self.xs:
                done += self.speed[-1] * (x - self.xs[-1])
            n += ev[x]
            self.xs.append(x)
            self.cap.append(done)
            self.speed.append(min(1.0, cores / (threads * n)) if n > 0 else 1.0)

    def stretch(self, start: float, work: float) -> float:
        xs, sp, cap = self.xs, self.speed, self.cap
        i = bisect.bisect_right(xs, start) - 1
        if i < 0:  # before the first interval: full speed until it
            if not xs or start + work <= xs[0]:
                return work
            work -= xs[0] - start
            return (xs[0] - start) + self.stretch(xs[0], work)
        target = cap[i] + sp[i] * (start - xs[i]) + work
        j = bisect.bisect_right(cap, target) - 1
        j = max(j, i)
        return xs[j] + (target - cap[j]) / sp[j] - start


class SimPipeline:
    """The :class:`~pp_sarathi.runtime.driver.Pipeline` the driver talks to in a simulation."""

    def __init__(self, cost: CostModel, layers_per_stage: list[int], clock: VirtualClock,
                 dummy_token: int = 0, driver_blocks_on_stage0: bool = True,
                 schedule_overhead_s: float = 0.0, keep_records: bool = True, block_size: int = 16,
                 jitter: float | Callable[[float], float] = 0.0, seed: int = 0, stretch=None,
                 replay: dict[tuple[int, int], float] | None = None, observer=None):
        self.cost = cost
        self.layers = list(layers_per_stage)
        self.num_stages = len(self.layers)
        self.clock = clock
        self.engine = PipelineEngine(self.num_stages, keep_records, stretch)
        self.blocking = driver_blocks_on_stage0
        self.sched_overhead = schedule_overhead_s
        self._sample = SampleResult(dummy_token)
        self._inflight: deque[tuple[float, list]] = deque()
        self.busy_s = [0.0] * self.num_stages
        self.block_size = block_size  # of the runtime's cache: sizes the plan metadata on the wire
        # The spread (sd of ln time) of a step as a function of its modelled seconds.
        self.jitter_at: Callable[[float], float] | None = (
            jitter if callable(jitter) else (lambda _s, j=jitter: j) if jitter > 0 else None)
        self._rng = random.Random(seed)
        self.jitter_factor: dict[int, list[float]] = {}  # batch id -> the jitter draw per stage
        # (stage, batch id) -> seconds: compute times recorded by a real run, used instead of
        # the cost model's (checks the event engine on its own; transport stays modelled)
        self.replay = replay
        # Told every micro-batch's stage-0 compute, as the runtime tells its predictor
        # (``observer(predicted_s, measured_s, prefills, decode_ctx, num_sampled)``).
        self.observer = observer

    def times(self, plan: BatchPlan) -> StageTimes:
        t = self.cost.stage_times(BatchShape.from_plan(plan, self.block_size), self.layers)
        if self.replay is not None:
            rec = self.replay
            return StageTimes([rec.get((s, plan.id), c) for s, c in enumerate(t.compute)], t.transfer, t.ret,
                              t.send, t.recv)
        if self.jitter_at is not None:
            # Every stage's step varies independently from one micro-batch to the next
            # (log-normal around the modelled median time).
            g, sd = self._rng.gauss, self.jitter_at
            f = [math.exp(sd(c) * g(0.0, 1.0)) for c in t.compute]
            if self.engine.keep_records:
                self.jitter_factor[plan.id] = f
            t = StageTimes([c * x for c, x in zip(t.compute, f)], t.transfer, t.ret, t.send, t.recv)
        return t

    def submit(self, plan: BatchPlan) -> None:
        times = self.times(plan)
        if self.observer is not None and plan.predicted_stage_s:
            self.observer(plan.predicted_stage_s[0], times.compute[0], *plan.cost_shape())
        for s, c in enumerate(times.compute):
            self.busy_s[s] += c
        ready = self.clock.now() + self.sched_overhead
        stage0_done, done = self.engine.push(plan.id, ready, times)
        if self.blocking:
            self.clock.advance_to(stage0_done)
        else:
            self.clock.advance_to(ready)
        sample = self._sample
        self._inflight.append((done, [sample if p.sample else None for p in plan.parts]))

    def collect(self) -> list[SampleResult | None]:
        done, results = self._inflight.popleft()
        self.clock.advance_to(done)
        return results

    def idle_until(self, t: float) -> None:
        self.clock.advance_to(t)

    @property
    def records(self) -> list[StageRecord]:
        return self.engine.records
