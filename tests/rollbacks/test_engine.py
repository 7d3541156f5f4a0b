"""The engine's state machines and guarantees, driven through its services in-process
(the worker's own entry point, ``engine.step_run``, is called directly; the Celery worker
process is exercised in test_engine_worker.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from ledger.models import Entry
from rollbacks import engine
from rollbacks.models import Attempt, Outbox, Rollback, Stage, Step
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
S, R = Step.State, Rollback.State


@pytest.fixture
def estate(make_system, target_server, tmp_path, monkeypatch):
    base, state = target_server
    db_path = tmp_path / "orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{db_path}")
    engine_estate.make_orders_db(db_path, [1, 2, 99])
    systems = engine_estate.build(make_system, base)
    return {"systems": systems, "target": state, "db_path": db_path, "base": base}


def test_a_dot_dot_parameter_in_a_url_makes_the_step_manual_with_the_reason(estate, alice):
    """The approver must see the URL that is called: ``/orders/../cancel`` would go out as
    ``/cancel`` (issue 16, finding 5), so the step is manual and says why."""
    from rollbacks import runs

    run, _ = runs.run_register(process="p", external_id="dots", actor="test")
    runs.action_report(
        run=run,
        system_slug="orders-api",
        action_type="create_order",
        idempotency_key="a-dots",
        actor="test",
        params={"order_id": ".."},
    )
    runs.run_fail(run=run, reason="boom", actor="test")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="undo")
    [step] = rollback.steps.all()
    assert step.is_manual and step.kind == "manual"
    assert "url: '..' is a path segment" in step.manual_reason
    assert "url" not in step.spec


def _run_dispatched(rollback) -> list[str]:
    """Play the worker: run every step whose message is due, as the worker would."""
    verdicts = []
    due = Step.objects.filter(
        rollback=rollback, state__in=(S.PENDING, S.RETRY_WAIT), stage__state=Stage.State.RUNNING
    )
    for step_id in due.values_list("pk", flat=True):
        Step.objects.filter(pk=step_id).update(next_attempt_at=None)
        verdicts.append(engine.step_run(step_id=step_id, worker="test"))
    return verdicts


def _drain(rollback, rounds: int = 20) -> Rollback:
    for _ in range(rounds):
        rollback.refresh_from_db()
        if rollback.state != R.RUNNING or not _run_dispatched(rollback):
            break
    rollback.refresh_from_db()
    return rollback


def test_plan_has_a_step_per_action_in_dependency_stages_with_pinned_versions(estate, alice):
    run = engine_estate.failed_run(orders=2)
    rollback = engine.rollback_plan(run=run, actor=alice, reason="bad migration")
    stages = {
        st.index: sorted(s.system.slug for s in st.steps.all()) for st in rollback.stages.all()
    }
    assert stages == {
        1: ["flags"],
        2: ["orders-api", "orders-api"],
        3: ["orders-db", "orders-db", "payment-gateway"],
    }
    assert rollback.dependency_map.version == 1
    assert all(s.contract.version == 1 for s in rollback.steps.all())
    manual = rollback.steps.get(system__slug="payment-gateway")
    assert (
        manual.is_manual
        and manual.kind == "manual"
        and "point of no return" in manual.manual_reason
    )
    api_step = (
        rollback.steps.filter(system__slug="orders-api")
        .order_by("forward_action__sequence")
        .first()
    )
    assert api_step.spec["url"].endswith("/orders-api/orders/1/cancel")
    assert api_step.spec["body"] == {"reason": "bad migration"}
    assert rollback.state == R.APPROVED  # no approval policy applies yet
    entry = Entry.objects.get(action="rollback.planned", rollback_id=rollback.pk)
    assert entry.payload["stages"] == [["flags"], ["orders-api"], ["orders-db", "payment-gateway"]]


def test_plan_refuses_without_reason_and_writes_nothing(estate, alice):
    run = engine_estate.failed_run()
    with pytest.raises(engine.EngineError) as exc:
        engine.rollback_plan(run=run, actor=alice, reason="  ")
    assert "reason" in exc.value.message_dict
    assert Rollback.objects.count() == 0


def test_outsider_and_auditor_cannot_plan_and_the_refusal_is_ledgered(estate, mallory, carol):
    run = engine_estate.failed_run()
    for user in (mallory, carol):
        with pytest.raises(PermissionDenied):
            engine.rollback_plan(run=run, actor=user, reason="x")
    assert Rollback.objects.count() == 0
    assert Entry.objects.filter(action="rollback.plan", outcome="refused").count() == 2


def test_three_stage_rollback_completes_in_dependency_order(estate, alice):
    run = engine_estate.failed_run()
    rollback = engine.rollback_plan(run=run, actor=alice, reason="bad migration")
    engine.rollback_start(rollback=rollback, actor=alice)
    # Stage 1 is dispatched through the outbox; stage 2 and 3 wait.
    assert set(Outbox.objects.values_list("kwargs__step_id", flat=True)) == {
        rollback.steps.get(system__slug="flags").pk
    }
    assert rollback.steps.get(system__slug="orders-api").state == S.PENDING
    rollback = _drain(rollback)
    # Stage 3 holds the manual step, so the rollback waits for a human.
    assert rollback.state == R.RUNNING
    manual = rollback.steps.get(system__slug="payment-gateway")
    assert manual.state == S.WAITING_HUMAN
    engine.step_resolve(step=manual, actor=alice, note="refunded pay_1 in the gateway console")
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED
    started = {st.index: st.started_at for st in rollback.stages.all()}
    finished = {st.index: st.finished_at for st in rollback.stages.all()}
    assert finished[1] <= started[2] and finished[2] <= started[3]
    assert engine_estate.order_ids(estate["db_path"]) == [2, 99]
    assert [e["path"] for e in estate["target"].effects] == ["/orders-api/orders/1/cancel"]
    assert "Undone: 4 of 4 steps" in rollback.outcome_summary
    actions = list(
        Entry.objects.filter(rollback_id=rollback.pk)
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions[0] == "rollback.planned" and actions[-1] == "rollback.finished"
    assert actions.count("stage.succeeded") == 3


def test_a_message_for_a_later_stage_is_not_claimable(estate, alice):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    later = rollback.steps.get(system__slug="orders-db")
    assert engine.step_run(step_id=later.pk) == "not claimable"
    later.refresh_from_db()
    assert later.state == S.PENDING and later.attempts == 0
    assert engine_estate.order_ids(estate["db_path"]) == [1, 2, 99]


def test_http_step_sends_stable_idempotency_key_and_traceparent(estate, alice):
    estate["target"].failures["/orders-api/orders/1/cancel"] = 503
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    _run_dispatched(rollback)  # flags
    step = rollback.steps.get(system__slug="orders-api")
    assert engine.step_run(step_id=step.pk) == "will retry"
    estate["target"].failures.clear()
    Step.objects.filter(pk=step.pk).update(next_attempt_at=None)
    assert engine.step_run(step_id=step.pk) == "succeeded"
    calls = [c for c in estate["target"].calls if c["path"] == "/orders-api/orders/1/cancel"]
    assert len(calls) == 2 and calls[0]["key"] == calls[1]["key"] == step.idempotency_key
    trace_id = rollback.trace_id
    assert all(c["traceparent"].startswith(f"00-{trace_id}-") for c in calls)
    assert calls[0]["traceparent"] != calls[1]["traceparent"]  # one span per attempt
    assert list(step.attempt_set.values_list("outcome", flat=True)) == ["transient", "succeeded"]


def test_duplicate_message_is_not_claimable_and_gives_one_effect(estate, alice):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    _run_dispatched(rollback)
    step = rollback.steps.get(system__slug="orders-api")
    assert engine.step_run(step_id=step.pk) == "succeeded"
    assert engine.step_run(step_id=step.pk) == "not claimable"
    assert len(estate["target"].effects) == 1 and step.attempt_set.count() == 1


def test_zombie_attempt_is_refused_after_its_lease_expired(estate, alice):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    _run_dispatched(rollback)
    step_id = rollback.steps.get(system__slug="orders-api").pk
    zombie, zombie_attempt = engine.claim(step_id, "zombie")
    # The zombie goes silent; its lease runs out and the sweeper hands the step on.
    Step.objects.filter(pk=step_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert engine.sweep()["expired"] == 1
    Step.objects.filter(pk=step_id).update(next_attempt_at=None)
    assert engine.step_run(step_id=step_id, worker="healthy") == "succeeded"
    # The zombie wakes up and reports: refused, and the step stays as the healthy worker left it.
    assert (
        engine.record(zombie, zombie_attempt, ok=False, error="late", permanent=True) == "refused"
    )
    step = Step.objects.get(pk=step_id)
    assert step.state == S.SUCCEEDED
    outcomes = list(step.attempt_set.order_by("number").values_list("outcome", flat=True))
    assert outcomes == [Attempt.Outcome.REFUSED, Attempt.Outcome.SUCCEEDED]
    assert Entry.objects.filter(action="step.attempt.refused", subject_id=str(step_id)).exists()
    assert Entry.objects.filter(action="step.lease_expired", subject_id=str(step_id)).exists()


def test_permanent_failure_halts_the_stage_and_waits_for_a_human(estate, alice):
    estate["target"].failures["/orders-api/orders/1/cancel"] = 409
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback = _drain(rollback)
    step = rollback.steps.get(system__slug="orders-api")
    assert (
        step.state == S.FAILED
        and "409" in step.last_error
        and "waiting for a human" in step.last_error
    )
    assert step.attempts == 1  # permanent: no retries
    assert rollback.stages.get(index=2).state == Stage.State.HALTED
    assert rollback.stages.get(index=3).state == Stage.State.PENDING
    assert engine_estate.order_ids(estate["db_path"]) == [1, 2, 99]  # stage 3 never ran
    assert rollback.state == R.RUNNING
    # A human retries once the target is fixed; the rollback goes on.
    estate["target"].failures.clear()
    engine.step_retry(step=step, actor=alice)
    rollback = _drain(rollback)
    assert rollback.stages.get(index=2).state == Stage.State.SUCCEEDED
    assert engine_estate.order_ids(estate["db_path"]) == [2, 99]


def test_transient_failures_stop_after_their_attempts(estate, alice):
    estate["target"].failures["/orders-api/orders/1/cancel"] = 500
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback = _drain(rollback)
    step = rollback.steps.get(system__slug="orders-api")
    assert step.state == S.FAILED and step.attempts == 3 and "3 attempts used" in step.last_error
    assert len([c for c in estate["target"].calls if c["path"].startswith("/orders-api")]) == 3


def test_skip_needs_a_reason_and_finishes_partially_rolled_back(estate, alice):
    estate["target"].failures["/orders-api/orders/1/cancel"] = 409
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback = _drain(rollback)
    step = rollback.steps.get(system__slug="orders-api")
    with pytest.raises(engine.EngineError):
        engine.step_skip(step=step, actor=alice, reason="")
    engine.step_skip(step=step, actor=alice, reason="order 1 was cancelled by support already")
    rollback = _drain(rollback)
    engine.step_resolve(
        step=rollback.steps.get(system__slug="payment-gateway"), actor=alice, note="refunded"
    )
    rollback.refresh_from_db()
    assert rollback.state == R.PARTIALLY_ROLLED_BACK
    outcome = engine.rollback_outcome(rollback)
    assert outcome["not_undone"] == [
        "create_order on orders-api: skipped — order 1 was cancelled by support already"
    ]
    assert len(outcome["undone"]) == 3
    assert "Not undone: create_order on orders-api" in rollback.outcome_summary


def test_pause_stops_new_work_and_resume_continues(estate, alice):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    flags = rollback.steps.get(system__slug="flags")
    engine.rollback_pause(rollback=rollback, actor=alice)
    assert engine.step_run(step_id=flags.pk) == "not claimable"
    flags.refresh_from_db()
    assert flags.state == S.PENDING and flags.attempts == 0
    engine.rollback_resume(rollback=rollback, actor=alice)
    assert engine.step_run(step_id=flags.pk) == "succeeded"


def test_in_flight_step_finishes_after_pause_but_next_stage_waits(estate, alice):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    flags = rollback.steps.get(system__slug="flags")
    claimed = engine.claim(flags.pk, "w1")
    engine.rollback_pause(rollback=rollback, actor=alice)
    assert engine.record(*claimed, ok=True, output={}) == "succeeded"
    assert rollback.stages.get(index=1).state == Stage.State.RUNNING  # not advanced while paused
    assert rollback.steps.get(system__slug="orders-api").state == S.PENDING
    engine.rollback_resume(rollback=rollback, actor=alice)
    assert rollback.stages.get(index=2).state == Stage.State.RUNNING


def test_abort_cancels_pending_work_and_says_what_was_undone(estate, alice):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    _run_dispatched(rollback)
    with pytest.raises(engine.EngineError):
        engine.rollback_abort(rollback=rollback, actor=alice, reason="")
    engine.rollback_abort(rollback=rollback, actor=alice, reason="wrong run")
    rollback.refresh_from_db()
    assert rollback.state == R.ABORTED
    assert set(rollback.steps.exclude(system__slug="flags").values_list("state", flat=True)) == {
        S.CANCELLED
    }
    assert (
        engine.step_run(step_id=rollback.steps.get(system__slug="orders-api").pk) == "not claimable"
    )
    assert rollback.outcome_summary.startswith("Undone: 1 of 4 steps.")
    with pytest.raises(engine.EngineError):
        engine.rollback_start(rollback=rollback, actor=alice)


def test_only_operators_of_the_team_act_and_auditors_change_nothing(estate, alice, carol, bob):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    for user in (carol, bob):
        with pytest.raises(PermissionDenied):
            engine.rollback_start(rollback=rollback, actor=user)
    rollback.refresh_from_db()
    assert rollback.state == R.APPROVED
    assert Entry.objects.filter(action="rollback.start", outcome="refused").count() == 2


def test_second_rollback_of_a_run_is_refused_while_one_is_under_way(estate, alice):
    run = engine_estate.failed_run()
    engine.rollback_plan(run=run, actor=alice, reason="r")
    with pytest.raises(engine.EngineError, match="already has a rollback under way"):
        engine.rollback_plan(run=run, actor=alice, reason="again")


def test_sweeper_redispatches_a_step_whose_message_was_lost(estate, alice, settings):
    settings.ENGINE_RUNNER = False  # without execution loops, the sweeper re-sends
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    Outbox.objects.all().delete()  # the message is gone
    long_ago = timezone.now() - timedelta(minutes=5)
    Step.objects.filter(rollback=rollback, state=S.PENDING).update(dispatched_at=long_ago)
    assert engine.sweep()["redispatched"] == 1
    assert Outbox.objects.filter(
        kwargs__step_id=rollback.steps.get(system__slug="flags").pk
    ).exists()


def test_with_execution_loops_a_lost_message_is_claimed_from_the_database_not_resent(
    estate, alice, settings
):
    from rollbacks.engine import loop as runner

    settings.ENGINE_RUNNER = True
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    Outbox.objects.all().delete()  # the message is gone
    long_ago = timezone.now() - timedelta(minutes=5)
    Step.objects.filter(rollback=rollback, state=S.PENDING).update(dispatched_at=long_ago)
    assert engine.sweep()["redispatched"] == 0
    assert not Outbox.objects.exists()
    # A loop looking for due work (no message named the step) claims it.
    (claimed,) = runner.claim_batch(hints={}, limit=10, worker="loop")
    assert claimed.step.system.slug == "flags" and claimed.attempt.number == 1
    assert Step.objects.get(pk=claimed.step.pk).state == S.RUNNING


def test_outbox_rows_left_unsent_by_a_crash_are_published_by_the_sweeper(
    estate, alice, monkeypatch
):
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)  # on_commit never runs inside this test
    sent = []
    from config.celery import app

    monkeypatch.setattr(app, "send_task", lambda name, **kw: sent.append((name, kw["kwargs"])))
    Outbox.objects.update(created_at=timezone.now() - timedelta(seconds=10))
    assert engine.sweep()["published"] == 1
    assert sent == [
        ("rollbacks.tasks.run_step", {"step_id": rollback.steps.get(system__slug="flags").pk})
    ]
    assert Outbox.objects.filter(sent_at__isnull=True).count() == 0


def test_an_account_reports_actions_only_on_its_teams_systems(estate, django_user_model):
    from django.contrib.auth.models import Group

    from rollbacks import runs

    platform_bot = django_user_model.objects.create_user("platform-bot")
    platform_bot.groups.set(
        [Group.objects.get(name="team:platform"), Group.objects.get_or_create(name="operator")[0]]
    )
    run, _ = runs.run_register(process="p", external_id="x", actor=platform_bot)
    with pytest.raises(engine.EngineError) as exc:
        runs.action_report(
            run=run,
            system_slug="orders-db",
            action_type="insert_order",
            idempotency_key="k",
            actor=platform_bot,
            params={"order_id": 1},
        )
    assert "not one of your teams' systems" in exc.value.message_dict["system"][0]
    assert run.actions.count() == 0
