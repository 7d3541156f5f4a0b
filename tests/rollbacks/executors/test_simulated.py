"""Simulated steps (drills, demos) and the executor registry."""

from __future__ import annotations

import random
import time

import pytest

from rollbacks.executors import ExecutorError, executor_for
from rollbacks.executors.simulated import SimulatedExecutor


def test_simulated_step_takes_its_latency(make_work):
    started = time.monotonic()
    outcome = executor_for("simulated").execute(make_work("simulated", {"latency_ms": 50}))
    assert time.monotonic() - started >= 0.05
    assert outcome.output == {"simulated": True, "latency_ms": 50}


def test_failure_rate_fails_transiently_about_that_often(make_work):
    executor = SimulatedExecutor(random.Random(7))
    work = make_work("simulated", {"failure_rate": 0.3})
    failures = []
    for _ in range(1000):
        try:
            executor.execute(work)
        except ExecutorError as exc:
            failures.append(exc)
    assert 250 < len(failures) < 350
    assert not any(exc.permanent for exc in failures)


def test_latency_beyond_the_timeout_is_a_transient_timeout(make_work):
    work = make_work("simulated", {"latency_ms": 5000}, timeout_s=0.05)
    with pytest.raises(ExecutorError) as caught:
        executor_for("simulated").execute(work)
    assert not caught.value.permanent and "timed out" in caught.value.message


@pytest.mark.parametrize("kind", ["manual", "carrier-pigeon"])
def test_manual_and_unknown_kinds_have_no_executor(kind):
    with pytest.raises(LookupError):
        executor_for(kind)
