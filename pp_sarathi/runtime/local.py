"""pp=1: every layer in this process; submit computes at once, collect hands results back."""
from __future__ import annotations

from collections import deque

from ..metrics.records import StageRecord
from ..metrics.timing import StageClock
from ..scheduler import BatchPlan, SampleResult
from .executor import StageExecutor


class LocalPipeline:
    num_stages = 1

    def __init__(self, executor: StageExecutor, clock: StageClock):
        self.executor = executor
        self.clock = clock
        self.records: list[StageRecord] = []
        self._done: deque[list[SampleResult | None]] = deque()
        self._stamps = []

    def submit(self, plan: BatchPlan) -> None:
        start = self.clock.stamp()
        results = self.executor.step(plan.parts)
        end = self.clock.stamp()
        self._stamps.append((plan.id, start, end))
        self._done.append(results)

    def collect(self) -> list[SampleResult | None]:
        return self._done.popleft()

    def finish(self) -> list[StageRecord]:
        """Resolve the stamps into records (the only place a GPU run synchronises on them)."""
        for bid, s, e in self._stamps:
            s, e = self.clock.seconds(s), self.clock.seconds(e)
            self.records.append(StageRecord(0, bid, s, s, s, e, e, e))
        self._stamps.clear()
        return self.records
