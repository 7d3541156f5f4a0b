"""The workers repeat the services' checks: a step runs only while whoever started the
rollback may still operate on its system (``refuse`` in rollbacks/engine/worker.py). A real Celery worker, a
real loopback HTTP target, PostgreSQL and Redis."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm, remove_perm

from ledger.models import Entry
from rollbacks import engine, runs, services
from rollbacks.engine import EngineError
from rollbacks.models import DependencyEdge, Rollback, Stage, Step

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]
S, R = Step.State, Rollback.State


def _wait(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def two_stages(make_system, target_server):
    """Stage 1: a manual step on the gateway (a point of no return); stage 2: an HTTP call
    to the loopback target on orders-api. Nothing reaches the target before stage 2."""
    base, state = target_server
    gateway = make_system("gateway", kind="third_party_api")
    api = make_system("orders-api")
    services.dependency_map_publish(
        edges=[(DependencyEdge.Kind.BEFORE, "gateway", "orders-api")], actor="test"
    )
    services.contract_publish(
        system=gateway, actor="test", actions={"capture": {"point_of_no_return": True}}
    )
    services.contract_publish(
        system=api,
        actor="test",
        actions={
            "create_order": {
                "compensation": {
                    "kind": "http",
                    "method": "POST",
                    "url": base + "/orders-api/orders/{params.order_id}/cancel",
                },
                "attempts": 2,
                "backoff": {"initial_s": 0.05, "max_s": 0.1},
                "timeout_s": 5,
            }
        },
    )
    run, _ = runs.run_register(process="checkout", external_id="r-1", actor="test")
    for system, action in (("gateway", "capture"), ("orders-api", "create_order")):
        runs.action_report(
            run=run,
            system_slug=system,
            action_type=action,
            idempotency_key=f"k-{system}",
            actor="test",
            params={"order_id": 7},
        )
    return run, api, state


def _revoke_role(user):
    user.groups.remove(Group.objects.get(name="operator"))


def _revoke_object_permission(user, api):
    # The team keeps the role and the rollback; only its right on the system goes.
    remove_perm("rollbacks.operate_system", Group.objects.get(name="team:payments"), api)


@pytest.mark.parametrize("revoke", ["role", "object permission"])
def test_a_step_is_refused_when_the_starter_lost_the_right_before_it_ran(
    worker_process, two_stages, alice, dave, revoke
):
    run, api, target = two_stages
    rollback = engine.rollback_plan(run=run, actor=alice, reason="bad deploy")
    engine.rollback_start(rollback=rollback, actor=alice)
    gateway_step = Step.objects.get(rollback=rollback, system__slug="gateway")
    api_step = Step.objects.get(rollback=rollback, system=api)
    _wait(lambda: Step.objects.get(pk=gateway_step.pk).state == S.WAITING_HUMAN, what="stage 1")
    # Paused, the right revoked, resumed by an admin: the rollback still runs on alice's word.
    engine.rollback_pause(rollback=rollback, actor=alice, reason="hold on")
    if revoke == "role":
        _revoke_role(alice)
        why = "alice no longer holds the operator role"
    else:
        _revoke_object_permission(alice, api)
        why = "alice may no longer operate on orders-api"
    engine.rollback_resume(rollback=rollback, actor=dave)
    engine.step_resolve(step=gateway_step, actor=dave, note="refunded by hand")

    step = _wait(
        lambda: Step.objects.filter(pk=api_step.pk, state=S.FAILED).first(), what="the refusal"
    )
    assert why in step.last_error and "refused before it ran" in step.last_error
    assert step.attempt_set.count() == 0 and step.attempts == 0
    assert target.calls == []  # the target got no call
    refusal = Entry.objects.get(rollback_id=rollback.pk, action="step.refused")
    assert refusal.outcome == "refused" and why in refusal.reason
    assert refusal.payload["started_by"] == "alice" and refusal.payload["system"] == "orders-api"
    assert Stage.objects.get(rollback=rollback, index=2).state == Stage.State.HALTED
    assert Rollback.objects.get(pk=rollback.pk).state == R.RUNNING  # waiting for a human

    # A retry is refused while the reason stands, and says why.
    with pytest.raises(EngineError, match=why):
        engine.step_retry(step=step, actor=dave)
    assert target.calls == []

    # Given back, the same step runs on a retry.
    if revoke == "role":
        alice.groups.add(Group.objects.get(name="operator"))
    else:
        assign_perm("rollbacks.operate_system", Group.objects.get(name="team:payments"), api)
    engine.step_retry(step=step, actor=dave)
    _wait(lambda: Rollback.objects.get(pk=rollback.pk).state == R.SUCCEEDED, what="the end")
    assert [c["path"] for c in target.calls] == ["/orders-api/orders/7/cancel"]
