"""Approval policies and approvals through the services: four-eyes, quorum, expiry,
attestations, strictest wins, revocation, rejection, break-glass and stage gates."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.utils import timezone

from governance import services
from governance.models import Approval, ApprovalPolicy, BreakGlass, StageGate
from ledger.models import Entry
from rollbacks import engine
from rollbacks.models import Rollback, Stage
from tests.rollbacks import engine_estate

R = Rollback.State


def _policy(name, **kw):
    groups = kw.pop("groups", [])
    systems = kw.pop("systems", [])
    policy = ApprovalPolicy.objects.create(name=name, **kw)
    policy.eligible_groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    policy.systems.set(systems)
    return policy


def _approver(django_user_model, name, *groups):
    user = django_user_model.objects.create_user(name)
    user.groups.set(
        [Group.objects.get_or_create(name=g)[0] for g in ("approver", "team:payments", *groups)]
    )
    return user


@pytest.fixture
def estate(make_system, target_server):
    return engine_estate.build(make_system, target_server[0])


@pytest.fixture
def plan(estate, alice):
    def make(**kw):
        return engine.rollback_plan(
            run=engine_estate.failed_run(external_id=kw.pop("ext", "run-1")),
            actor=alice,
            reason="r",
            **kw,
        )

    return make


pytestmark = pytest.mark.django_db


def test_no_policy_means_no_approval(plan):
    assert plan().state == R.APPROVED


def test_the_strictest_of_matching_policies_wins_and_the_plan_says_why(plan):
    _policy("low-tier", tiers=[3], approvals_required=0)
    _policy(
        "critical",
        tiers=[1],
        approvals_required=2,
        expires_after_s=1800,
        attestations=[{"key": "dpo", "label": "Personal data checked"}],
    )
    _policy("staging-only", environments=["staging"], approvals_required=5)
    rollback = plan()
    assert rollback.state == R.AWAITING_APPROVAL
    decision = rollback.policy_decision
    assert (
        decision.requirements["approvals"] == 2 and decision.requirements["expires_after_s"] == 1800
    )
    assert sorted(p.name for p in decision.policies.all()) == ["critical", "low-tier"]
    assert "critical (tier 1: orders-db, payment-gateway)" in decision.explanation
    assert (
        "Strictest wins: 2 approvals" in decision.explanation
        and "Personal data checked" in decision.explanation
    )
    assert "staging-only" not in decision.explanation


def test_requester_cannot_approve_own_rollback(plan, alice):
    alice.groups.add(Group.objects.get_or_create(name="approver")[0])
    _policy("critical", tiers=[1], approvals_required=1)
    rollback = plan()
    with pytest.raises(PermissionDenied, match="four-eyes"):
        services.rollback_approve(rollback=rollback, approver=alice, comment="looks fine")
    assert Approval.objects.count() == 0
    assert Entry.objects.filter(action="approval.give", outcome="refused").exists()


def test_quorum_of_two_with_attestation_releases_once(plan, bob, django_user_model):
    _policy(
        "critical",
        tiers=[1],
        approvals_required=2,
        attestations=[{"key": "dpo", "label": "PII checked"}],
    )
    rollback = plan()
    with pytest.raises(engine.EngineError) as exc:
        services.rollback_approve(
            rollback=rollback, approver=bob, comment="ok", attestations={"dpo": ""}
        )
    assert "PII checked" in str(exc.value.message_dict["attestations"])
    services.rollback_approve(
        rollback=rollback, approver=bob, comment="ok", attestations={"dpo": "no PII in orders"}
    )
    rollback.refresh_from_db()
    assert rollback.state == R.AWAITING_APPROVAL
    with pytest.raises(engine.EngineError, match="already decided"):
        services.rollback_approve(
            rollback=rollback, approver=bob, comment="again", attestations={"dpo": "x"}
        )
    erin = _approver(django_user_model, "erin")
    services.rollback_approve(
        rollback=rollback, approver=erin, comment="ok", attestations={"dpo": "checked"}
    )
    rollback.refresh_from_db()
    assert rollback.state == R.APPROVED
    assert Entry.objects.filter(action="rollback.approved", rollback_id=rollback.pk).count() == 1


def test_eligible_groups_and_auditors_are_enforced(plan, carol, django_user_model):
    _policy("critical", tiers=[1], approvals_required=1, groups=["sre-leads"])
    rollback = plan()
    plain = _approver(django_user_model, "plain")
    with pytest.raises(PermissionDenied, match="sre-leads"):
        services.rollback_approve(rollback=rollback, approver=plain, comment="ok")
    with pytest.raises(PermissionDenied):
        services.rollback_approve(rollback=rollback, approver=carol, comment="ok")
    lead = _approver(django_user_model, "lead", "sre-leads")
    services.rollback_approve(rollback=rollback, approver=lead, comment="ok")
    rollback.refresh_from_db()
    assert rollback.state == R.APPROVED


def test_expired_approval_no_longer_counts_at_start(plan, bob, alice):
    _policy("critical", tiers=[1], approvals_required=1, expires_after_s=600)
    rollback = plan()
    approval = services.rollback_approve(rollback=rollback, approver=bob, comment="ok")
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(engine.EngineError, match="0 of 1 approvals"):
        engine.rollback_start(rollback=rollback, actor=alice)
    rollback.refresh_from_db()
    assert rollback.state == R.AWAITING_APPROVAL


def test_revoked_approval_sends_the_rollback_back_to_approval(plan, bob):
    _policy("critical", tiers=[1], approvals_required=1)
    rollback = plan()
    approval = services.rollback_approve(rollback=rollback, approver=bob, comment="ok")
    services.approval_revoke(approval=approval, actor=bob, reason="I missed the billing impact")
    rollback.refresh_from_db()
    assert rollback.state == R.AWAITING_APPROVAL


def test_rejection_aborts_with_the_reason(plan, bob):
    _policy("critical", tiers=[1], approvals_required=2)
    rollback = plan()
    services.rollback_reject(rollback=rollback, approver=bob, comment="wrong run")
    rollback.refresh_from_db()
    assert (
        rollback.state == R.ABORTED
        and "rejected by bob: wrong run" in Entry.objects.get(action="rollback.rejected").reason
    )


def test_break_glass_starts_without_approval_and_needs_two_reviews(plan, alice, bob, carol):
    _policy("critical", tiers=[1], approvals_required=2)
    rollback = plan()
    with pytest.raises(PermissionDenied):
        services.rollback_break_glass(
            rollback=rollback, actor=alice, reason="orders are being double charged"
        )
    alice.user_permissions.add(Permission.objects.get(codename="use_break_glass"))
    alice = type(alice).objects.get(pk=alice.pk)  # drop the permission cache
    rollback = services.rollback_break_glass(
        rollback=rollback, actor=alice, reason="orders are being double charged"
    )
    assert rollback.state == R.RUNNING and BreakGlass.objects.filter(rollback=rollback).exists()
    with pytest.raises(PermissionDenied):
        services.break_glass_review(rollback=rollback, reviewer=alice, comment="self review")
    services.break_glass_review(rollback=rollback, reviewer=bob, comment="justified")
    services.break_glass_review(rollback=rollback, reviewer=carol, comment="justified")
    assert rollback.break_glass.reviews.count() == 2


def test_stage_touching_a_gated_tier_waits_for_an_approver(plan, alice, bob):
    _policy("gate-critical", tiers=[1], approvals_required=0, gate_tiers=[1])
    rollback = plan()
    assert rollback.state == R.APPROVED
    engine.rollback_start(rollback=rollback, actor=alice)
    for step in rollback.steps.filter(stage__index__in=(1, 2)):
        engine.step_run(step_id=step.pk)
    stage3 = rollback.stages.get(index=3)
    assert (
        stage3.state == Stage.State.PENDING
        and StageGate.objects.filter(rollback=rollback, stage_index=3).exists()
    )
    services.gate_open(rollback=rollback, stage_index=3, actor=bob, comment="DBA on the call")
    stage3.refresh_from_db()
    assert stage3.state == Stage.State.RUNNING


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_approvals_give_exactly_the_quorum_and_one_transition(
    plan, django_user_model
):
    _policy("critical", tiers=[1], approvals_required=3)
    rollback = plan()
    approvers = [_approver(django_user_model, f"approver-{i}") for i in range(20)]
    barrier = threading.Barrier(20)
    outcomes: list[str] = []

    def approve(user):
        try:
            barrier.wait()
            services.rollback_approve(rollback=rollback, approver=user, comment="ok")
            outcomes.append("approved")
        except engine.EngineError as exc:
            outcomes.append(str(exc.message_dict))
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(u,)) for u in approvers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    rollback.refresh_from_db()
    assert outcomes.count("approved") == 3 and len(outcomes) == 20
    assert Approval.objects.filter(rollback=rollback).count() == 3
    assert rollback.state == R.APPROVED
    assert Entry.objects.filter(action="rollback.approved", rollback_id=rollback.pk).count() == 1
