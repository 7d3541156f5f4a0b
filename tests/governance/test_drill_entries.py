"""Governance marks its ledger entries about a drill as the engine and the drills app do:
``is_drill`` in the payload (docs/drills.md), so an auditor can filter drills out."""

from __future__ import annotations

import pytest

from governance import services as governance
from governance.models import ApprovalPolicy
from ledger.models import Entry
from rollbacks import services
from tests.dashboard.conftest import _plan

pytestmark = pytest.mark.django_db


@pytest.fixture
def estate(make_system):
    services.contract_publish(
        system=make_system("orders-api"),
        actions={"act": {"compensation": {"kind": "simulated", "latency_ms": 1}}},
        actor="test",
    )
    ApprovalPolicy.objects.create(name="two-approvers", approvals_required=2)


def _governance_life(requester, approver, admin, auditor, *, is_drill: bool):
    """Policy applied, an approval given and revoked, break-glass, two reviews."""
    rollback = _plan(f"drill-{is_drill}", ["orders-api"], requester, is_drill=is_drill)
    approval = governance.rollback_approve(rollback=rollback, approver=approver, comment="ok")
    governance.approval_revoke(approval=approval, actor=approver, reason="looked again")
    governance.rollback_break_glass(rollback=rollback, actor=admin, reason="customers are down")
    for reviewer in (approver, auditor):
        governance.break_glass_review(rollback=rollback, reviewer=reviewer, comment="justified")
    return rollback


GOVERNANCE_ACTIONS = {
    "policy.applied",
    "approval.given",
    "approval.revoked",
    "rollback.break_glass",
    "break_glass.reviewed",
}


@pytest.mark.parametrize("is_drill", [True, False])
def test_every_entry_about_a_rollback_says_whether_it_is_a_drill(
    estate, alice, bob, carol, dave, is_drill
):
    rollback = _governance_life(alice, bob, dave, carol, is_drill=is_drill)
    entries = list(Entry.objects.filter(rollback_id=rollback.pk).exclude(outcome="refused"))
    assert {e.action for e in entries} >= GOVERNANCE_ACTIONS
    assert [e.action for e in entries if e.payload.get("is_drill") is not is_drill] == []
