"""Reconciliation with real parts: a Celery worker process on Redis, PostgreSQL, and a second
PostgreSQL database as the target where a duplicate and an orphan are planted."""

from __future__ import annotations

import time

import pytest

from governance import services as governance
from governance.models import ApprovalPolicy
from ledger.models import Entry
from reconcile import services
from reconcile.models import CheckResult, Finding, Reconciliation
from rollbacks import engine
from rollbacks.models import Rollback, Stage, Step
from tests.reconcile import estate

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(180)]
R = Rollback.State


@pytest.fixture
def live(monkeypatch, make_system, transactional_db, request):
    name = estate.create_target(monkeypatch)  # before the worker starts: it inherits the env
    worker = request.getfixturevalue("worker_process")
    estate.build(make_system)
    yield {"url": f"postgres://postgres@127.0.0.1:5432/{name}", "worker": worker}
    from tests.conftest import stop_process

    stop_process(worker)
    estate.drop_target(name)


def _wait(predicate, timeout: float = 40.0, what: str = "condition"):
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            print(f"{what}: {time.monotonic() - start:.1f} s")
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _done(rollback, count: int) -> list[Reconciliation]:
    recs = list(
        Reconciliation.objects.filter(rollback=rollback, state=Reconciliation.State.DONE).order_by(
            "finished_at"
        )
    )
    return recs if len(recs) >= count else []


def test_findings_are_fixed_by_a_follow_up_stage_on_a_real_worker(live, alice, bob):
    ApprovalPolicy.objects.create(name="everything", approvals_required=1)
    rollback = engine.rollback_plan(run=estate.failed_run(), actor=alice, reason="bad migration")
    assert rollback.state == R.AWAITING_APPROVAL
    governance.rollback_approve(rollback=rollback, approver=bob, comment="checked the plan")
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: Rollback.objects.get(pk=rollback.pk).state == R.SUCCEEDED, what="the rollback")
    assert estate.rows(live["url"], "orders") == [10, 11]  # the rollback did its part

    # Reconciliation ran by itself on the worker and found what the rollback left behind.
    (first,) = _wait(lambda: _done(rollback, 1), what="the first reconciliation")
    assert first.trigger == Reconciliation.Trigger.AUTO
    findings = {f.check_name: f for f in Finding.objects.filter(reconciliation=first)}
    assert set(findings) == {"duplicate_refs", "orphaned_items"}
    dup, orphan = findings["duplicate_refs"], findings["orphaned_items"]
    assert (dup.category, dup.details) == ("duplicate_key", {"id": 11, "external_ref": "r10"})
    assert (orphan.category, orphan.details) == ("orphaned_record", {"id": 100, "order_id": 1})
    assert orphan.compensation == {
        "kind": "sql",
        "database": "orders",
        "statement": "DELETE FROM order_items WHERE id = %(id)s",
        "params": {"id": 100},
    }
    assert {f.status for f in findings.values()} == {Finding.Status.OPEN}
    ledgered = set(
        Entry.objects.filter(rollback_id=rollback.pk, action="reconcile.finding").values_list(
            "subject_id", flat=True
        )
    )
    assert ledgered == {str(dup.pk), str(orphan.pk)}

    # The operator adds both as a follow-up stage; the policy asks for a new approval.
    stage = services.followup_add(rollback=rollback, finding_ids=[dup.pk, orphan.pk], actor=alice)
    rollback.refresh_from_db()
    assert stage.index == 2 and rollback.state == R.AWAITING_APPROVAL
    assert rollback.finished_at is None
    with pytest.raises(engine.EngineError):  # the old approval was for the plan as it was
        engine.rollback_start(rollback=rollback, actor=alice)
    governance.rollback_approve(rollback=rollback, approver=bob, comment="the two deletes")
    engine.rollback_start(rollback=rollback, actor=alice)
    _wait(lambda: Rollback.objects.get(pk=rollback.pk).state == R.SUCCEEDED, what="stage 2")

    assert estate.rows(live["url"], "orders") == [10]
    assert estate.rows(live["url"], "order_items") == [101]
    steps = Step.objects.filter(stage=stage)
    assert steps.count() == 2 and {s.state for s in steps} == {Step.State.SUCCEEDED}
    assert {s.idempotency_key for s in steps} == {
        f"unwind-reconcile-{dup.pk}",
        f"unwind-reconcile-{orphan.pk}",
    }
    assert Stage.objects.get(rollback=rollback, index=1).state == Stage.State.SUCCEEDED
    # Stage 1's steps did not run again: one attempt each.
    assert {s.attempts for s in Step.objects.filter(rollback=rollback, stage__index=1)} == {1}
    assert set(Finding.objects.filter(reconciliation=first).values_list("status", flat=True)) == {
        Finding.Status.ADDED
    }

    # When the follow-up ended, reconciliation ran again: clean.
    second = _wait(lambda: _done(rollback, 2), what="the second reconciliation")[-1]
    assert second.pk != first.pk and not second.findings.exists()
    outcomes = set(second.results.values_list("check_name", "outcome"))
    assert outcomes == {
        ("duplicate_refs", CheckResult.Outcome.CLEAN),
        ("orphaned_items", CheckResult.Outcome.CLEAN),
    }
    actions = list(
        Entry.objects.filter(rollback_id=rollback.pk)
        .order_by("seq")
        .values_list("action", flat=True)
    )
    for expected in (
        "reconcile.started",
        "reconcile.finished",
        "reconcile.followup_added",
        "rollback.reopened",
    ):
        assert expected in actions
    assert actions.index("reconcile.followup_added") < actions.index("rollback.reopened")
