"""A drill with real parts: two Celery worker processes and beat (the sweeper) on Redis and
PostgreSQL, a loopback HTTP target standing in for production. The drill injects failing
steps, a slow step and a worker kill; its report shows each and what it caused."""

from __future__ import annotations

import os
import time

import pytest
import redis
from django.urls import reverse

from drills.models import Fault
from governance import services as governance
from governance.models import ApprovalPolicy
from ledger.models import Entry
from reports.builder import report_build
from rollbacks import engine
from rollbacks.models import Attempt, Rollback, Stage, Step
from tests.conftest import WORKER_ARGS, start_celery, stop_process
from tests.rollbacks import engine_estate
from tests.rollbacks.engine_estate import wait_for as _wait

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]
S, R = Step.State, Rollback.State


def _worker_args(name: str) -> list[str]:
    args = list(WORKER_ARGS)
    args[args.index("--concurrency") + 1] = "1"
    return [*args, "--hostname", f"{name}@%h"]


@pytest.fixture
def fleet(target_server, make_system, transactional_db, tmp_path, monkeypatch):
    """The estate, two workers (one will be killed) and beat sweeping every second."""
    base, state = target_server
    monkeypatch.delenv("TARGET_DATABASE_ORDERS", raising=False)  # a SQL call would fail
    engine_estate.build(make_system, base)
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    workers = [start_celery(_worker_args(name), tmp_path / f"{name}.log") for name in ("w1", "w2")]
    beat = start_celery(
        ["beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")],
        tmp_path / "beat.log",
        extra_env={"SWEEP_INTERVAL_S": "1"},
        ready="beat: Starting",
    )
    yield {"target": state, "workers": workers}
    for proc in [*workers, beat]:
        stop_process(proc)


def _step(rollback, slug: str, n: int = 0) -> Step:
    return Step.objects.filter(rollback=rollback, system__slug=slug).order_by(
        "forward_action__sequence"
    )[n]


def test_drill_with_failing_steps_and_a_worker_kill_and_its_report(fleet, alice, bob, client):
    ApprovalPolicy.objects.create(
        name="drills", drill_scope="drill", approvals_required=1, gate_tiers=[1]
    )
    run = engine_estate.failed_run(orders=2)
    actions = {
        (a.system.slug, n): a.pk
        for slug in ("flags", "orders-api", "orders-db")
        for n, a in enumerate(run.actions.filter(system__slug=slug).order_by("sequence"))
    }
    drill = engine.rollback_plan(
        run=run,
        actor=alice,
        reason="game day: checkout migration",
        is_drill=True,
        faults=[
            {"action": actions["flags", 0], "kind": "slow", "seconds": 1.0},
            {"action": actions["orders-api", 0], "kind": "fail", "times": 2},
            {"action": actions["orders-api", 1], "kind": "fail", "permanent": True},
            {"action": actions["orders-db", 0], "kind": "kill"},
        ],
    )
    assert drill.state == R.AWAITING_APPROVAL  # a real plan with its approvals
    governance.rollback_approve(rollback=drill, approver=bob, comment="drill plan read")
    engine.rollback_start(rollback=drill, actor=alice)

    # Stage 2: one step fails permanently and halts the stage until alice retries it.
    halted = _wait(lambda: _step(drill, "orders-api", 1).state == S.FAILED, what="the halt")
    assert halted and Stage.objects.get(rollback=drill, index=2).state == Stage.State.HALTED
    time.sleep(1.0)
    engine.step_retry(step=_step(drill, "orders-api", 1), actor=alice)

    # Stage 3 touches tier 1: it waits at its gate until bob opens it.
    _wait(
        lambda: Entry.objects.filter(rollback_id=drill.pk, action="stage.gated").exists(),
        what="the gate of stage 3",
    )
    time.sleep(0.5)
    governance.gate_open(rollback=drill, stage_index=3, actor=bob, comment="go for stage 3")

    # The kill: the worker that runs the first SQL step dies; beat's sweeper hands it on.
    _wait(
        lambda: sum(w.poll() is not None for w in fleet["workers"]) == 1,
        timeout=30,
        what="a worker to be killed",
    )
    manual = _wait(
        lambda: (
            _step(drill, "payment-gateway").state == S.WAITING_HUMAN
            and _step(drill, "payment-gateway")
        ),
        what="the manual step",
    )
    engine.step_resolve(step=manual, actor=alice, note="drill: refund walked through on paper")
    _wait(
        lambda: Rollback.objects.get(pk=drill.pk).state == R.SUCCEEDED,
        timeout=90,
        what="the drill to finish",
    )

    # Production was never called; the SQL steps never reached a database either.
    assert fleet["target"].calls == [] and fleet["target"].effects == []
    killed = _step(drill, "orders-db", 0)
    outcomes = list(killed.attempt_set.order_by("number").values_list("outcome", flat=True))
    assert outcomes == ["lost", "succeeded"]
    assert killed.output == {"simulated": True, "rehearsal_of": "sql"}
    assert list(Fault.objects.filter(rollback=drill).values_list("fired", flat=True)) == [
        1,
        2,
        1,
        1,
    ]

    # The report shows each fault and what it caused, with real numbers.
    report = report_build(drill)
    faults = {(r["System"], r["Fault"]): r for r in report.section("drill").rows}
    kill = faults["orders-db", "kills the worker once"]
    assert "killed during attempt 1" in kill["What it caused"]
    assert "lease expired, the sweeper marked it lost" in kill["What it caused"]
    assert "re-dispatched: attempt 2 started" in kill["What it caused"]
    # Handed on once its lease ran out (ENGINE_LEASE_S), by a loop's check every second.
    lease = engine.LEASE.total_seconds()
    assert lease - 0.5 <= kill["Delay (s)"] <= lease + 10, kill
    transient = faults["orders-api", "fails transiently twice"]
    assert transient["Hits"] == "2 of 2"
    assert transient["What it caused"].startswith("attempts 1, 2 failed transiently; retried 2×")
    assert transient["What it caused"].endswith("then attempt 3 succeeded")
    permanent = faults["orders-api", "fails permanently once"]
    assert "the stage halted until alice retried it" in permanent["What it caused"]
    assert permanent["Delay (s)"] >= 1.0
    slow = faults["flags", "slows down 1 s, once"]
    took = float(slow["What it caused"].split("(took ")[1].split(" s")[0])
    assert took >= 1.0
    assert "Rehearsed, nothing called: flags (simulated)" not in report.section("drill").summary
    assert "orders-api (http)" in report.section("drill").summary
    assert "orders-db (sql)" in report.section("drill").summary

    waits = {r["Waiting for"]: r for r in report.section("waits").rows}
    assert waits["approval"]["Ended by"] == "bob: approval complete"
    assert waits["an approver to open its gate"]["Ended by"] == "bob: opened a stage gate"
    assert waits["an approver to open its gate"]["Waited (s)"] >= 0.5
    halted_wait = waits["a human: the step failed (stage halted)"]
    assert halted_wait["Ended by"] == "alice: retried a step" and halted_wait["Waited (s)"] >= 1.0
    assert any(k.startswith("a human to do it by hand") for k in waits)
    metrics = {r["Metric"]: r["Value"] for r in report.section("metrics").rows}
    # The kill loses every step its worker had in flight (an execution loop holds several:
    # here the other SQL step of stage 3 too, when the same loop claimed it); each ran again.
    lost = Attempt.objects.filter(step__rollback=drill, outcome=Attempt.Outcome.LOST)
    assert metrics["Lost attempts"] == lost.count() >= 1 and metrics["Retries"] >= 4
    assert set(lost.values_list("step__system__slug", flat=True)) == {"orders-db"}
    for step in Step.objects.filter(pk__in=lost.values("step")):
        assert step.state == S.SUCCEEDED
        assert step.attempt_set.filter(outcome=Attempt.Outcome.SUCCEEDED).count() == 1
    assert metrics["Duration"] >= kill["Delay (s)"]
    stages = {r["Stage"]: r for r in report.section("stages").rows}
    assert stages[3]["Duration (s)"] >= kill["Delay (s)"] - 1

    client.force_login(alice)
    md = client.get(reverse("rollback-report-md", args=[drill.pk]))
    assert md["Content-Disposition"] == f'attachment; filename="drill-{drill.pk}-report.md"'
    text = md.content.decode()
    assert text.startswith(f"# Drill report: rollback #{drill.pk}")
    assert "> **DRILL**" in text and "kills the worker once" in text
    assert "fails permanently once" in text and "## Where people waited" in text
    print(f"drill: worker killed, step re-dispatched {kill['Delay (s)']} s after the kill")
