"""The engine with real parts: a Celery worker process (and beat, for the sweeper) on Redis,
PostgreSQL, a loopback HTTP target and a second PostgreSQL database as a SQL target."""

from __future__ import annotations

import os
import signal
import time

import pytest

from config.celery import app
from rollbacks import engine
from rollbacks.models import Rollback, Stage, Step
from tests.conftest import WORKER_ARGS, start_celery, stop_process
from tests.rollbacks import engine_estate
from tests.rollbacks.engine_estate import orders_in as _orders
from tests.rollbacks.engine_estate import state_of as _state
from tests.rollbacks.engine_estate import step_of as _step
from tests.rollbacks.engine_estate import wait_for as _wait

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]
S, R = Step.State, Rollback.State


@pytest.fixture
def live(orders_target, target_server, make_system, transactional_db, tmp_path):
    """Estate + target DB + HTTP target, then a worker and a beat (sweeping every second)."""
    import redis

    base, state = target_server
    engine_estate.build(make_system, base)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    beat = start_celery(
        ["beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
        tmp_path / "beat.log",
        extra_env={"SWEEP_INTERVAL_S": "1"},
        ready="beat: Starting",
    )
    ctx = {
        "base": base,
        "target": state,
        "db": orders_target,
        "worker": worker,
        "beat": beat,
        "tmp": tmp_path,
    }
    yield ctx
    stop_process(ctx["worker"])
    stop_process(beat)


def test_three_stage_rollback_runs_in_dependency_order_on_a_real_worker(live, alice):
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(orders=2), actor=alice, reason="bad migration"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: _step(rollback, "payment-gateway").state == S.WAITING_HUMAN, what="stage 3")
    _wait(
        lambda: (
            not Step.objects.filter(rollback=rollback, system__slug="orders-db")
            .exclude(state=S.SUCCEEDED)
            .exists()
        ),
        what="the SQL steps",
    )
    engine.step_resolve(
        step=_step(rollback, "payment-gateway"), actor=alice, note="refunded by hand"
    )
    assert _state(rollback) == R.SUCCEEDED
    engine_estate.assert_stages_in_order(rollback)
    steps = Step.objects.filter(rollback=rollback).select_related("stage")
    for step in steps.exclude(is_manual=True):
        first = step.attempt_set.order_by("started_at").first()
        assert first.started_at >= step.stage.started_at  # no step before its stage
    assert _orders(live["db"]) == [99]
    cancels = sorted(e["path"] for e in live["target"].effects)
    assert cancels == ["/orders-api/orders/1/cancel", "/orders-api/orders/2/cancel"]


def test_worker_killed_mid_step_is_recovered_with_exactly_one_effect(live, alice):
    path = "/orders-api/orders/1/cancel"
    live["target"].delays[path] = 4.0  # the call is in flight when the worker dies
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(with_payment=False), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: any(c["path"] == path for c in live["target"].calls), what="the HTTP call")
    killed_at = time.monotonic()
    os.killpg(live["worker"].pid, signal.SIGKILL)  # the whole worker: parent and pool children
    live["worker"].wait(timeout=10)
    live["worker"] = start_celery(WORKER_ARGS, live["tmp"] / "worker2.log")
    step = _step(rollback, "orders-api")
    _wait(lambda: step.attempt_set.count() >= 2, timeout=60, what="the second attempt")
    recovered_in = time.monotonic() - killed_at
    _wait(lambda: _state(rollback) == R.SUCCEEDED, timeout=60, what="the rollback to finish")
    assert recovered_in < 45, f"re-dispatched {recovered_in:.1f} s after the kill"
    calls = [c for c in live["target"].calls if c["path"] == path]
    effects = [e for e in live["target"].effects if e["path"] == path]
    assert len(calls) == 2 and calls[0]["key"] == calls[1]["key"]
    assert len(effects) == 1  # the target saw the key twice and acted once
    outcomes = list(step.attempt_set.order_by("number").values_list("outcome", flat=True))
    assert outcomes == ["lost", "succeeded"]
    print(f"worker SIGKILL: step re-dispatched and re-claimed {recovered_in:.1f} s after the kill")


def test_step_message_delivered_twice_gives_one_effect(live, alice):
    path = "/orders-api/orders/1/cancel"
    live["target"].delays[path] = 1.0
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(with_payment=False), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: _step(rollback, "orders-api").state != S.PENDING, what="stage 2")
    step = _step(rollback, "orders-api")
    for _ in range(3):  # duplicates while the first attempt is in flight, and after
        app.send_task(engine.RUN_STEP, kwargs={"step_id": step.pk})
    _wait(lambda: _state(rollback) == R.SUCCEEDED, what="the rollback to finish")
    app.send_task(engine.RUN_STEP, kwargs={"step_id": step.pk})
    time.sleep(1.0)
    assert len([e for e in live["target"].effects if e["path"] == path]) == 1
    assert step.attempt_set.count() == 1
    assert _orders(live["db"]) == [2, 99]


def test_permanently_failing_step_halts_its_stage_and_waits_for_a_human(live, alice):
    live["target"].failures["/orders-api/orders/1/cancel"] = 422
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(with_payment=False), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: _step(rollback, "orders-api").state == S.FAILED, what="the step to fail")
    time.sleep(2.5)  # long enough for the sweeper to run twice: nothing loops, nothing moves on
    step = _step(rollback, "orders-api")
    assert step.attempts == 1 and step.state == S.FAILED
    assert Stage.objects.get(rollback=rollback, index=2).state == Stage.State.HALTED
    assert Stage.objects.get(rollback=rollback, index=3).state == Stage.State.PENDING
    assert _state(rollback) == R.RUNNING and _orders(live["db"]) == [1, 2, 99]
    engine.step_skip(step=step, actor=alice, reason="support cancelled order 1 by hand")
    _wait(lambda: _state(rollback) == R.PARTIALLY_ROLLED_BACK, what="the rollback to finish")
    assert _orders(live["db"]) == [2, 99]


def test_pause_lets_in_flight_steps_finish_then_resume_and_abort(live, alice):
    path = "/orders-api/orders/1/cancel"
    live["target"].delays[path] = 2.0
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(with_payment=False), actor=alice, reason="r"
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: any(c["path"] == path for c in live["target"].calls), what="the HTTP call")
    engine.rollback_pause(rollback=rollback, actor=alice)
    _wait(lambda: _step(rollback, "orders-api").state == S.SUCCEEDED, what="the in-flight step")
    time.sleep(2.0)
    assert (
        Stage.objects.get(rollback=rollback, index=3).state == Stage.State.PENDING
    )  # nothing new started
    assert _orders(live["db"]) == [1, 2, 99]
    engine.rollback_resume(rollback=rollback, actor=alice)
    _wait(lambda: _state(rollback) == R.SUCCEEDED, what="the rollback to finish")
    assert _orders(live["db"]) == [2, 99]

    # Abort a second rollback while its first stage is in flight: nothing after it runs.
    run2 = engine_estate.failed_run(with_payment=False, external_id="run-2")
    live["target"].delays.clear()
    rollback2 = engine.rollback_plan(run=run2, actor=alice, reason="r2")
    engine.rollback_pause(
        rollback=engine.rollback_start(rollback=rollback2, actor=alice), actor=alice
    )
    engine.rollback_abort(rollback=rollback2, actor=alice, reason="operator changed their mind")
    time.sleep(1.5)
    assert _state(rollback2) == R.ABORTED
    assert set(
        Step.objects.filter(rollback=rollback2)
        .exclude(system__slug="flags")
        .values_list("state", flat=True)
    ) == {S.CANCELLED}
