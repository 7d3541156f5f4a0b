"""A known history of rollbacks for the dashboard's tests, with exact times.

Tuesday 10 March 2026 (D) and Wednesday 11 March (D+1), in UTC:

| rollback | systems (steps)                  | planned   | state     | ended  | run failed | steps |
|----------|----------------------------------|-----------|-----------|--------|------------|-------|
| r1       | orders-api                       | D 10:00   | succeeded | +30 m  | 09:55      | 1 try; approved at 10:10 |
| r2       | orders-api ×2, billing           | D 12:00   | failed    | +60 m  | —          | 3 tries; skipped; failed |
| r3       | orders-api                       | D+1 09:00 | succeeded | +10 m  | 08:40      | 2 tries (a near miss) |
| drill    | orders-api                       | D+1 11:00 | succeeded | +5 m   | —          | a drill |
| foreign  | flags (platform team)            | D 15:00   | aborted   | +5 m   | —          | cancelled |
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from governance import services as governance
from governance.models import ApprovalPolicy
from rollbacks import engine, runs, services
from rollbacks.models import ProcessRun, Rollback, Stage, Step, System

D = datetime(2026, 3, 10, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _plan(name, actions, requester, *, is_drill=False):
    run, _ = runs.run_register(process="p", external_id=name, actor="test")
    for i, system in enumerate(actions):
        runs.action_report(
            run=run, system_slug=system, action_type="act", idempotency_key=f"k{i}", actor="test"
        )
    runs.run_fail(run=run, reason="boom", actor="test")
    return engine.rollback_plan(run=run, actor=requester, reason="r", is_drill=is_drill)


def _shape(rollback, *, created, state, minutes, failed_at=None, steps=(), stage_minutes=None):
    """Write the history straight into the rows (a test fixture, not a state change)."""
    Rollback.objects.filter(pk=rollback.pk).update(
        created_at=created,
        started_at=created,
        state=state,
        finished_at=created + minutes * MIN,
    )
    ProcessRun.objects.filter(pk=rollback.run_id).update(failed_at=failed_at)
    for step, (step_state, attempts) in zip(rollback.steps.order_by("pk"), steps, strict=True):
        Step.objects.filter(pk=step.pk).update(state=step_state, attempts=attempts)
    if stage_minutes is not None:
        start, end = stage_minutes
        Stage.objects.filter(rollback=rollback).update(
            started_at=created + start * MIN, finished_at=created + end * MIN
        )


@pytest.fixture
def history(make_system, alice, bob, carol, django_user_model, monkeypatch):
    from django.contrib.auth.models import Group

    for slug, team in (("orders-api", "payments"), ("billing", "payments"), ("flags", "platform")):
        make_system(slug, team=team)
    for system in System.objects.all():
        services.contract_publish(
            system=system, actions={"act": {"compensation": {"kind": "simulated"}}}, actor="test"
        )
    ApprovalPolicy.objects.create(name="everything", approvals_required=1)
    pat = django_user_model.objects.create_user("pat")
    pat.groups.set(
        [Group.objects.get(name="team:platform"), Group.objects.get_or_create(name="operator")[0]]
    )
    S, R = Step.State, Rollback.State

    r1 = _plan("r1", ["orders-api"], alice)
    # The ledger stamps the approval: make its clock read D 10:10.
    import ledger.services

    monkeypatch.setattr(
        ledger.services,
        "timezone",
        SimpleNamespace(now=lambda: D + timedelta(hours=10, minutes=10)),
    )
    governance.rollback_approve(rollback=r1, approver=bob, comment="ok", attestations={})
    monkeypatch.undo()
    _shape(
        r1,
        created=D + timedelta(hours=10),
        state=R.SUCCEEDED,
        minutes=30,
        failed_at=D + timedelta(hours=9, minutes=55),
        steps=[(S.SUCCEEDED, 1)],
        stage_minutes=(12, 30),
    )
    r2 = _plan("r2", ["orders-api", "orders-api", "billing"], alice)
    _shape(
        r2,
        created=D + timedelta(hours=12),
        state=R.FAILED,
        minutes=60,
        steps=[(S.SUCCEEDED, 3), (S.SKIPPED, 1), (S.FAILED, 3)],
        stage_minutes=(0, 20),
    )
    r3 = _plan("r3", ["orders-api"], alice)
    _shape(
        r3,
        created=D + timedelta(days=1, hours=9),
        state=R.SUCCEEDED,
        minutes=10,
        failed_at=D + timedelta(days=1, hours=8, minutes=40),
        steps=[(S.SUCCEEDED, 2)],
        stage_minutes=(0, 10),
    )
    drill = _plan("drill", ["orders-api"], alice, is_drill=True)
    _shape(
        drill,
        created=D + timedelta(days=1, hours=11),
        state=R.SUCCEEDED,
        minutes=5,
        steps=[(S.SUCCEEDED, 1)],
        stage_minutes=(0, 5),
    )
    foreign = _plan("foreign", ["flags"], pat)
    _shape(
        foreign,
        created=D + timedelta(hours=15),
        state=R.ABORTED,
        minutes=5,
        steps=[(S.CANCELLED, 0)],
    )
    return SimpleNamespace(r1=r1, r2=r2, r3=r3, drill=drill, foreign=foreign, pat=pat)
