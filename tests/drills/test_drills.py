"""Drills in-process: rehearsal targets, faults set with the plan, on the page and through
the API, refused on real rollbacks; the worker's own entry point (``engine.step_run``) is
called directly here, and a real Celery worker in test_drill_worker.py."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from drills import services
from drills.models import Fault
from ledger.models import Entry
from rollbacks import engine
from rollbacks.models import Rollback, Stage, Step
from rollbacks.tokens import token_create
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
S, R = Step.State, Rollback.State


@pytest.fixture
def estate(make_system, target_server, monkeypatch):
    base, state = target_server
    # No TARGET_DATABASE_ORDERS: a drill that tried the SQL target would fail loudly.
    monkeypatch.delenv("TARGET_DATABASE_ORDERS", raising=False)
    systems = engine_estate.build(make_system, base)
    return {"systems": systems, "target": state, "base": base}


def _drain(rollback, rounds: int = 30) -> Rollback:
    """Play the worker: run every due step until nothing is left to run."""
    for _ in range(rounds):
        rollback.refresh_from_db()
        due = Step.objects.filter(
            rollback=rollback,
            state__in=(S.PENDING, S.RETRY_WAIT),
            stage__state=Stage.State.RUNNING,
        )
        ids = list(due.values_list("pk", flat=True))
        if rollback.state != R.RUNNING or not ids:
            break
        for step_id in ids:
            Step.objects.filter(pk=step_id).update(next_attempt_at=None)
            engine.step_run(step_id=step_id, worker="test")
    rollback.refresh_from_db()
    return rollback


def _action(run, slug: str, n: int = 0):
    return run.actions.filter(system__slug=slug).order_by("sequence")[n]


def test_a_drill_never_calls_production_targets_and_faults_fire(estate, alice):
    run = engine_estate.failed_run(orders=1)
    api_action = _action(run, "orders-api")
    rollback = engine.rollback_plan(
        run=run,
        actor=alice,
        reason="quarterly drill",
        is_drill=True,
        faults=[{"action": api_action.pk, "kind": "fail", "times": 2}],
    )
    fault = Fault.objects.get(rollback=rollback)
    assert (fault.kind, fault.times, fault.fired, fault.step.forward_action_id) == (
        "fail",
        2,
        0,
        api_action.pk,
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback = _drain(rollback)
    manual = rollback.steps.get(system__slug="payment-gateway")
    engine.step_resolve(step=manual, actor=alice, note="drill: refund rehearsed on paper")
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED
    assert rollback.outcome_summary.startswith("Rehearsed: ")  # what the engine stores
    assert "Undone" not in rollback.outcome_summary
    assert estate["target"].calls == [] and estate["target"].effects == []
    api_step = rollback.steps.get(system__slug="orders-api")
    outcomes = list(api_step.attempt_set.order_by("number").values_list("outcome", flat=True))
    assert outcomes == ["transient", "transient", "succeeded"]
    assert api_step.output == {"simulated": True, "rehearsal_of": "http"}
    db_step = rollback.steps.get(system__slug="orders-db")
    assert db_step.output == {"simulated": True, "rehearsal_of": "sql"}
    fault.refresh_from_db()
    assert fault.fired == 2
    fired = Entry.objects.filter(rollback_id=rollback.pk, action="drill.fault.fired")
    assert [e.payload["attempt"] for e in fired.order_by("id")] == [1, 2]
    assert all(e.payload["is_drill"] for e in fired)
    # Every entry of the engine's and the drill's says it belongs to a drill.
    entries = Entry.objects.filter(
        rollback_id=rollback.pk, action__regex=r"^(rollback|stage|step|drill)\."
    )
    assert entries.count() > 20
    assert [e.action for e in entries if e.payload.get("is_drill") is not True] == []


def test_a_rehearsal_target_is_called_for_real_in_a_drill(estate, alice):
    estate["systems"]["orders-api"].is_rehearsal = True
    estate["systems"]["orders-api"].save()
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(orders=1, with_payment=False),
        actor=alice,
        reason="drill",
        is_drill=True,
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback = _drain(rollback)
    assert rollback.state == R.SUCCEEDED
    assert [c["path"] for c in estate["target"].calls] == ["/orders-api/orders/1/cancel"]
    assert rollback.outcome_summary.startswith("Undone: ")  # undone for real, on rehearsal


def test_a_permanent_fault_halts_the_stage_until_a_human_retries(estate, alice):
    run = engine_estate.failed_run(orders=1, with_payment=False)
    rollback = engine.rollback_plan(
        run=run,
        actor=alice,
        reason="drill",
        is_drill=True,
        faults=[
            {"action": _action(run, "orders-api").pk, "kind": "fail", "permanent": True},
            {"action": _action(run, "flags").pk, "kind": "slow", "seconds": 0.3},
        ],
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback = _drain(rollback)
    step = rollback.steps.get(system__slug="orders-api")
    assert step.state == S.FAILED and "injected permanent failure" in step.last_error
    assert rollback.stages.get(index=2).state == Stage.State.HALTED
    flags_attempt = rollback.steps.get(system__slug="flags").attempt_set.get()
    assert (flags_attempt.finished_at - flags_attempt.started_at).total_seconds() >= 0.3
    engine.step_retry(step=step, actor=alice)
    assert _drain(rollback).state == R.SUCCEEDED
    assert estate["target"].calls == []


def test_a_kill_fault_never_kills_an_in_process_caller(estate, alice):
    run = engine_estate.failed_run(orders=1, with_payment=False)
    rollback = engine.rollback_plan(
        run=run,
        actor=alice,
        reason="drill",
        is_drill=True,
        faults=[{"action": _action(run, "flags").pk, "kind": "kill"}],
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    step = rollback.steps.get(system__slug="flags")
    assert engine.step_run(step_id=step.pk, worker="test") == "will retry"
    step.refresh_from_db()
    assert "fires only in a prefork Celery worker" in step.last_error
    assert Fault.objects.get(rollback=rollback).fired == 0  # not counted as a hit


@pytest.mark.parametrize(
    ("fault", "field", "message"),
    [
        ({"kind": "explode"}, "faults[0].kind", "must be one of fail, slow, kill"),
        ({"kind": "fail", "times": 0}, "faults[0].times", "from 1 to 10"),
        ({"kind": "slow"}, "faults[0].seconds", "needs its seconds"),
        ({"kind": "kill", "permanent": True}, "faults[0].permanent", "only a failing step"),
        ({"kind": "fail", "action": -1}, "faults[0].action", "no such step"),
    ],
)
def test_bad_faults_refuse_the_whole_plan(estate, alice, fault, field, message):
    run = engine_estate.failed_run(orders=1)
    spec = {"action": _action(run, "orders-api").pk} | fault
    with pytest.raises(ValidationError) as caught:
        engine.rollback_plan(run=run, actor=alice, reason="r", is_drill=True, faults=[spec])
    assert message in " ".join(caught.value.message_dict[field])
    assert not Rollback.objects.exists() and not Fault.objects.exists()


def test_faults_are_refused_on_a_real_rollback(estate, alice):
    run = engine_estate.failed_run(orders=1)
    spec = {"action": _action(run, "orders-api").pk, "kind": "fail"}
    with pytest.raises(engine.EngineError) as caught:
        engine.rollback_plan(run=run, actor=alice, reason="r", faults=[spec])
    assert caught.value.message_dict == {
        "faults": ["faults can be injected into drills only: plan a drill"]
    }
    assert not Rollback.objects.exists()
    real = engine.rollback_plan(run=run, actor=alice, reason="r")
    with pytest.raises(ValidationError) as caught:
        services.fault_add(rollback=real, actor=alice, step_id=real.steps.first().pk, kind="fail")
    assert "not a drill" in caught.value.message_dict["faults"][0]
    assert not Fault.objects.exists()


def test_faults_through_the_api_and_refused_for_a_real_rollback(estate, alice, client):
    run = engine_estate.failed_run(orders=1)
    _, token = token_create(user=alice, name="ci")
    headers = {"Authorization": f"Bearer {token}"}
    fault = {"action": _action(run, "orders-api").pk, "kind": "fail", "times": 2}

    def post(body):
        return client.post(
            "/api/v1/rollbacks", json.dumps(body), content_type="application/json", headers=headers
        )

    refused = post({"run": run.pk, "reason": "r", "faults": [fault]})
    assert refused.status_code == 400
    assert refused.json()["errors"] == {
        "faults": ["faults can be injected into drills only: plan a drill"]
    }
    assert not Rollback.objects.exists()
    bad = post({"run": run.pk, "reason": "r", "drill": True, "faults": [fault | {"times": 11}]})
    assert bad.status_code == 400 and "faults" in json.dumps(bad.json()["errors"])
    ok = post({"run": run.pk, "reason": "r", "drill": True, "faults": [fault]})
    assert ok.status_code == 201 and ok.json()["is_drill"] is True
    stored = Fault.objects.get()
    assert (stored.rollback_id, stored.kind, stored.times) == (ok.json()["id"], "fail", 2)


def test_faults_on_the_rollback_page_until_the_drill_starts(estate, alice, carol, client):
    run = engine_estate.failed_run(orders=1)
    drill = engine.rollback_plan(run=run, actor=alice, reason="drill", is_drill=True)
    api_step = drill.steps.get(system__slug="orders-api")
    client.force_login(alice)
    page = client.get(reverse("rollback", args=[drill.pk])).content.decode()
    assert 'id="drill-fault-form"' in page and f'href="/rollbacks/{drill.pk}/report"' in page
    add = reverse("drill-fault-add", args=[drill.pk])
    response = client.post(add, {"step": api_step.pk, "kind": "kill", "times": 1})
    assert response.status_code == 302 and response["Location"].endswith("#drill-faults")
    fault = Fault.objects.get(rollback=drill)
    assert fault.kind == "kill" and fault.step == api_step
    assert Entry.objects.filter(action="drill.fault.added", rollback_id=drill.pk).count() == 1
    page = client.get(reverse("rollback", args=[drill.pk])).content.decode()
    assert "kills the worker once" in page
    # A manual step cannot be chosen; a bad number names its field and changes nothing.
    manual = drill.steps.get(system__slug="payment-gateway")
    client.post(add, {"step": manual.pk, "kind": "fail", "times": 1})
    client.post(add, {"step": api_step.pk, "kind": "fail", "times": 99})
    assert Fault.objects.filter(rollback=drill).count() == 1
    # An auditor sees the faults and changes nothing.
    client.force_login(carol)
    assert client.post(add, {"step": api_step.pk, "kind": "fail", "times": 1}).status_code == 403
    page = client.get(reverse("rollback", args=[drill.pk])).content.decode()
    assert "kills the worker once" in page and 'id="drill-fault-form"' not in page
    client.force_login(alice)
    remove = reverse("drill-fault-remove", args=[drill.pk, fault.pk])
    assert client.post(remove).status_code == 302 and not Fault.objects.exists()
    engine.rollback_start(rollback=drill, actor=alice)
    client.post(add, {"step": api_step.pk, "kind": "fail", "times": 1})
    assert not Fault.objects.exists()  # started: faults are frozen
    page = client.get(reverse("rollback", args=[drill.pk])).content.decode()
    assert 'id="drill-fault-form"' not in page


def test_a_real_rollback_page_has_no_fault_panel(estate, alice, client):
    real = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    client.force_login(alice)
    page = client.get(reverse("rollback", args=[real.pk])).content.decode()
    assert "drill-faults" not in page and "Post-incident report" in page


@pytest.mark.parametrize(
    ("kind", "is_drill", "is_rehearsal_target", "expected"),
    [
        ("http", True, False, "RehearsalExecutor"),
        ("sql", True, False, "RehearsalExecutor"),
        ("flag", True, False, "RehearsalExecutor"),
        ("http", True, True, "HttpExecutor"),
        ("sql", True, True, "SqlExecutor"),
        ("simulated", True, False, "SimulatedExecutor"),
        ("http", False, False, "HttpExecutor"),
        ("http", False, True, "HttpExecutor"),
    ],
)
def test_executor_for_step_rehearses_a_drill_off_rehearsal_targets(
    kind, is_drill, is_rehearsal_target, expected
):
    from rollbacks.executors import executor_for_step

    executor = executor_for_step(kind, is_drill=is_drill, is_rehearsal_target=is_rehearsal_target)
    assert type(executor).__name__ == expected
    with pytest.raises(LookupError):  # a manual step has no executor, drill or not
        executor_for_step("manual", is_drill=True, is_rehearsal_target=False)
