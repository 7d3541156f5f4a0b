"""The claim rule (engine.worker.claimable) is defined once; its SQL claim (PostgreSQL) and
its ORM claim (SQLite) take exactly the steps it names, over every combination of the
states that matter."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from rollbacks import engine, runs
from rollbacks.engine import worker
from rollbacks.models import ForwardAction, Rollback, Stage, Step

pytestmark = pytest.mark.django_db
S, R = Step.State, Rollback.State
STEP_STATES = [S.PENDING, S.RETRY_WAIT, S.RUNNING, S.FAILED, S.WAITING_HUMAN, S.SUCCEEDED]
STAGE_STATES = [Stage.State.PENDING, Stage.State.RUNNING, Stage.State.HALTED, Stage.State.SUCCEEDED]
DUE = ["none", "past", "future"]


def _expected(step_state, is_manual, due, rollback_state, stage_state) -> bool:
    return (
        step_state in (S.PENDING, S.RETRY_WAIT)
        and not is_manual
        and due != "future"
        and rollback_state == R.RUNNING
        and stage_state in (Stage.State.RUNNING, Stage.State.HALTED)
    )


@pytest.fixture
def matrix(make_system, alice):
    """Two rollbacks (running, paused), each with a stage per stage state, each stage with
    a step per (step state, manual, due): 288 steps."""
    system = make_system("svc")
    run, _ = runs.run_register(process="p", external_id="x", actor="test")
    action = ForwardAction.objects.create(
        run=run, sequence=1, system=system, action_type="a", idempotency_key="k"
    )
    now = timezone.now()
    at = {"none": None, "past": now - timedelta(seconds=5), "future": now + timedelta(hours=1)}
    expected = {}
    for rollback_state in (R.RUNNING, R.PAUSED):
        rollback = Rollback.objects.create(run=run, reason="r", state=rollback_state)
        for index, stage_state in enumerate(STAGE_STATES, start=1):
            stage = Stage.objects.create(rollback=rollback, index=index, state=stage_state)
            for step_state, is_manual, due in itertools.product(STEP_STATES, (False, True), DUE):
                step = Step.objects.create(
                    rollback=rollback,
                    stage=stage,
                    forward_action=action,
                    system=system,
                    kind="manual" if is_manual else "simulated",
                    is_manual=is_manual,
                    state=step_state,
                    next_attempt_at=at[due],
                    idempotency_key=f"k-{rollback_state}-{index}-{step_state}-{is_manual}-{due}",
                )
                expected[step.pk] = _expected(
                    step_state, is_manual, due, rollback_state, stage_state
                )
    return now, expected


def _claimed_by(claim, ids, now) -> set[int]:
    """What ``claim`` takes, in a savepoint rolled back afterwards."""
    sid = transaction.savepoint()
    try:
        return set(claim(ids, now))
    finally:
        transaction.savepoint_rollback(sid)


def test_the_rule_names_exactly_the_claimable_combinations(matrix):
    now, expected = matrix
    assert set(engine.claimable(now).values_list("pk", flat=True)) == {
        pk for pk, ok in expected.items() if ok
    }
    assert sum(expected.values()) == 2 * 2 * 2  # pending|retry_wait × none|past × 2 stages


def test_the_orm_claim_takes_what_the_rule_names(matrix):
    now, expected = matrix
    assert _claimed_by(worker._claim_orm, list(expected), now) == {
        pk for pk, ok in expected.items() if ok
    }


@pytest.mark.postgres
def test_the_sql_claim_and_the_orm_claim_agree(matrix):
    now, expected = matrix
    ids = list(expected)
    by_sql = _claimed_by(worker._claim_sql, ids, now)
    assert by_sql == _claimed_by(worker._claim_orm, ids, now)
    assert by_sql == {pk for pk, ok in expected.items() if ok}
    # Each claimed step got one more attempt, a new token and a lease.
    claimed = worker._claim_sql(sorted(by_sql), now)
    assert set(claimed) == by_sql and set(claimed.values()) == {(1, 1)}
    assert not Step.objects.filter(pk__in=by_sql).exclude(state=S.RUNNING).exists()
    assert worker._claim_sql(ids, now) == {}  # claimed once: nothing left to claim
