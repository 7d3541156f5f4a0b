"""Time to approval has one definition (``Rollback.objects.with_time_to_approval``): the
metrics page and a rollback's report give the same figure for the same rollback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from dashboard import metrics
from dashboard.metrics import Filters
from governance import services as governance
from governance.models import ApprovalPolicy
from reports.builder import report_build
from rollbacks import engine, services
from rollbacks.models import Rollback, System
from tests.dashboard.conftest import _plan

pytestmark = pytest.mark.django_db
MARCH = Filters(since=datetime(2026, 3, 1, tzinfo=UTC), until=datetime(2026, 4, 1, tzinfo=UTC))


def _report_metric(rollback) -> tuple:
    row = next(
        r for r in report_build(rollback).section("metrics").rows if "approval" in r["Metric"]
    )
    return row["Value"], row["Measured"]


def test_the_report_and_the_metrics_page_give_the_same_time_to_approval(history, carol):
    # r1 was planned at D 10:00 and approved at D 10:10; r2 still awaits its approval.
    totals = metrics.compute(carol, MARCH).totals
    assert totals["approval_avg"] == timedelta(minutes=10) and totals["approved"] == 1
    assert _report_metric(history.r1) == (
        600.0,
        "from planning to the approval that completed the policy",
    )
    assert _report_metric(history.r2) == ("—", "not approved")
    r1 = Rollback.objects.with_time_to_approval().get(pk=history.r1.pk)
    assert r1.needed_approval and r1.time_to_approval == timedelta(minutes=10)


def test_a_follow_up_approval_is_not_the_plans_time_to_approval(make_system, alice, bob, dave):
    """Planned with no approval needed, ended, reopened for a follow-up that needed one: the
    plan waited for nobody, on the report and on the metrics page alike."""
    services.contract_publish(
        system=make_system("orders-api"),
        actions={"act": {"compensation": {"kind": "simulated"}}},
        actor="test",
    )
    rollback = _plan("no-policy", ["orders-api"], alice)
    assert rollback.state == Rollback.State.APPROVED  # no policy applied
    engine.rollback_abort(rollback=rollback, actor=alice, reason="try again later")
    ApprovalPolicy.objects.create(name="everything", approvals_required=1)
    with transaction.atomic():
        locked = Rollback.objects.select_for_update().get(pk=rollback.pk)
        engine.rollback_reopen(rollback=locked, actor=alice, reason="follow-up stage")
    governance.rollback_approve(rollback=locked, approver=bob, comment="ok", attestations={})
    assert Rollback.objects.get(pk=rollback.pk).state == Rollback.State.APPROVED

    timed = Rollback.objects.with_time_to_approval().get(pk=rollback.pk)
    assert not timed.needed_approval and timed.time_to_approval is None
    value, measured = _report_metric(rollback)
    assert value == 0.0 and measured.startswith("no approval was required")
    now = rollback.created_at
    today = Filters(since=now - timedelta(days=1), until=now + timedelta(days=1))
    totals = metrics.compute(dave, today).totals
    assert totals["count"] == 1 and totals["approved"] == 0 and totals["approval_avg"] is None
    assert System.objects.count() == 1
