"""Simulated compensations for drills and demos: no target, just latency and failures.

``latency_ms`` is slept (cut short at the step's timeout, which then fails transiently,
as a slow real target would); ``failure_rate`` (0–1) is the chance that an attempt fails
transiently, so drills exercise retries and backoff. A simulated step never fails
permanently: the schema has no such option, on purpose.
"""

from __future__ import annotations

import asyncio
import random
import time

from .base import ExecutorError, Outcome, StepWork


class SimulatedExecutor:
    """``kind: simulated`` — ``latency_ms``, ``failure_rate``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def execute(self, work: StepWork) -> Outcome:
        latency_s = work.spec.get("latency_ms", 0) / 1000
        time.sleep(min(latency_s, work.timeout_s))
        return self._after_sleep(work, latency_s)

    async def execute_async(self, work: StepWork, client=None) -> Outcome:
        latency_s = work.spec.get("latency_ms", 0) / 1000
        if latency_s:
            await asyncio.sleep(min(latency_s, work.timeout_s))
        return self._after_sleep(work, latency_s)

    def _after_sleep(self, work: StepWork, latency_s: float) -> Outcome:
        if latency_s > work.timeout_s:
            raise ExecutorError(
                f"simulated step timed out after {work.timeout_s}s", permanent=False
            )
        failure_rate = work.spec.get("failure_rate", 0)
        if failure_rate and self.rng.random() < failure_rate:
            raise ExecutorError(
                f"simulated transient failure (failure_rate {failure_rate})", permanent=False
            )
        return Outcome({"simulated": True, "latency_ms": round(latency_s * 1000)})


class RehearsalExecutor:
    """A drill's step on a production system: nothing is called, the attempt succeeds and
    says which kind of compensation it stood in for (``rehearsal_of``)."""

    def execute(self, work: StepWork) -> Outcome:
        return Outcome({"simulated": True, "rehearsal_of": work.kind})

    async def execute_async(self, work: StepWork, client=None) -> Outcome:
        return self.execute(work)
