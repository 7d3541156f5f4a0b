"""Escalation: overdue approvals, steps waiting for a human and failed rollbacks are sent
once per channel, by email (Django's locmem backend in tests) and by a JSON webhook to a
real loopback HTTP receiver; a failed webhook is retried on the next run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from governance import notifications, tasks
from governance.models import ApprovalPolicy, Notification
from ledger.models import Entry
from rollbacks import engine, runs
from rollbacks.models import Rollback, Step
from tests.rollbacks import engine_estate

HOOK = "/hooks/unwind"
R, S = Rollback.State, Step.State

pytestmark = pytest.mark.django_db


def _member(django_user_model, username, email, *groups):
    user = django_user_model.objects.create_user(username, email=email)
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return user


@pytest.fixture
def hook(target_server, settings):
    base, state = target_server
    settings.ESCALATION_WEBHOOK_URL = base + HOOK
    settings.ESCALATION_EMAILS = ["oncall@example.com"]
    settings.APPROVAL_DEADLINE_S = 900
    settings.UNWIND_BASE_URL = "https://unwind.example.com"
    return state


@pytest.fixture
def estate(make_system, target_server):
    return engine_estate.build(make_system, target_server[0])


@pytest.fixture
def people(django_user_model, alice, bob, carol, teams):
    alice.email, bob.email, carol.email = "alice@example.com", "bob@example.com", "carol@x"
    for user in (alice, bob, carol):
        user.save()
    _member(django_user_model, "paula", "paula@example.com", "operator", "team:platform")
    _member(django_user_model, "olga", "olga@example.com", "team:payments")  # no role
    _member(django_user_model, "quiet", "", "operator", "team:payments")  # no address
    return {"alice": alice, "bob": bob}


def settings_url(_state) -> str:
    from django.conf import settings

    return settings.ESCALATION_WEBHOOK_URL


def _calls(state) -> list[dict]:
    return [e for e in state.effects if e["path"] == HOOK]


def _later(minutes: float):
    return timezone.now() + timedelta(minutes=minutes)


def _awaiting(alice) -> Rollback:
    ApprovalPolicy.objects.create(name="critical", tiers=[1], approvals_required=1)
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(with_payment=False), actor=alice, reason="bad migration"
    )
    assert rollback.state == R.AWAITING_APPROVAL
    return rollback


def _single_action_run(action_type, system, external_id):
    run, _ = runs.run_register(process="checkout", external_id=external_id, actor="test")
    runs.action_report(
        run=run,
        system_slug=system,
        action_type=action_type,
        idempotency_key="k-1",
        actor="test",
        params={"order_id": 7, "payment_id": "pay_7"},
    )
    return run


def test_an_approval_past_its_deadline_is_sent_once_by_email_and_webhook(
    hook, estate, people, alice
):
    rollback = _awaiting(alice)
    assert notifications.escalate(now=_later(14)) == {"sent": 0, "failed": 0, "skipped": 0}
    assert notifications.escalate(now=_later(16)) == {"sent": 2, "failed": 0, "skipped": 0}
    (email,) = mail.outbox
    assert email.subject == f"[Unwind] approval pending past its deadline: rollback #{rollback.pk}"
    # The configured addresses and the team's operators and approvers with an address.
    assert email.to == ["alice@example.com", "bob@example.com", "oncall@example.com"]
    assert f"https://unwind.example.com/rollbacks/{rollback.pk}/" in email.body
    assert "has awaited approval for 16 min (deadline 15 min)" in email.body
    assert "still missing: 0 of 1 approvals" in email.body
    (call,) = _calls(hook)
    assert call["body"] == {
        "kind": "approval_overdue",
        "title": email.subject,
        "subject": call["body"]["subject"],
        "subject_key": call["body"]["subject_key"],
        "rollback": {
            "id": rollback.pk,
            "url": f"https://unwind.example.com/rollbacks/{rollback.pk}/",
            "state": "awaiting_approval",
            "reason": "bad migration",
            "is_drill": False,
            "run": rollback.run_id,
        },
        "trace_id": rollback.trace_id,
        "notification": Notification.objects.get(channel="webhook").pk,
    }
    assert call["key"] == f"unwind-notification-{call['body']['notification']}"
    assert call["body"]["subject"].startswith(f"rollback #{rollback.pk} has awaited approval")
    # Later rounds send nothing more.
    assert notifications.escalate(now=_later(30))["sent"] == 0
    assert len(mail.outbox) == 1 and len(_calls(hook)) == 1
    notes = Notification.objects.filter(rollback=rollback)
    assert sorted(notes.values_list("channel", flat=True)) == ["email", "webhook"]
    assert all(n.sent_at and n.error == "" for n in notes)
    sent = Entry.objects.filter(action="notification.sent", rollback_id=rollback.pk)
    assert sorted(e.payload["channel"] for e in sent) == ["email", "webhook"]
    assert sent[0].trace_id == rollback.trace_id


def test_an_approval_that_lapsed_is_escalated_again_after_a_new_wait(hook, estate, people, alice):
    from governance import services

    rollback = _awaiting(alice)
    notifications.escalate(now=_later(16))
    approval = services.rollback_approve(rollback=rollback, approver=people["bob"], comment="ok")
    services.approval_revoke(approval=approval, actor=people["bob"], reason="missed billing")
    # Waiting again since the lapse (just now): due again only after a new deadline.
    assert notifications.escalate(now=_later(14))["sent"] == 0
    assert notifications.escalate(now=_later(16))["sent"] == 2
    keys = set(Notification.objects.values_list("subject_key", flat=True))
    assert len(keys) == 2


def test_a_step_waiting_for_a_human_is_sent_once(hook, estate, people, alice):
    run = _single_action_run("capture_payment", "payment-gateway", "pay-1")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="refund it")
    engine.rollback_start(rollback=rollback, actor=alice)
    step = rollback.steps.get()
    assert step.state == S.WAITING_HUMAN
    assert notifications.escalate()["sent"] == 2
    assert notifications.escalate()["sent"] == 0
    (email,) = mail.outbox
    assert email.subject == f"[Unwind] a step waits for a human: rollback #{rollback.pk}"
    assert (
        f"step #{step.pk} (capture_payment on payment-gateway) is waiting for a human: "
        "point of no return" in email.body
    )
    assert _calls(hook)[0]["body"]["subject_key"] == f"step:{step.pk}:waiting_human:0"


def test_a_step_that_fails_again_after_a_retry_is_escalated_again(hook, estate, people, alice):
    hook.failures["/orders-api/orders/7/cancel"] = 422  # a permanent error
    run = _single_action_run("create_order", "orders-api", "order-7")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="undo order 7")
    engine.rollback_start(rollback=rollback, actor=alice)
    step = rollback.steps.get()
    engine.step_run(step_id=step.pk)
    step.refresh_from_db()
    assert step.state == S.FAILED
    assert notifications.escalate()["sent"] == 2
    engine.step_retry(step=step, actor=alice)
    engine.step_run(step_id=step.pk)
    assert notifications.escalate()["sent"] == 2
    assert sorted(
        Notification.objects.filter(channel="email").values_list("subject_key", flat=True)
    ) == [f"step:{step.pk}:failed:1", f"step:{step.pk}:failed:2"]
    assert "422" in mail.outbox[0].body


def test_a_failed_rollback_is_sent_once(hook, estate, people, alice):
    hook.failures["/orders-api/orders/7/cancel"] = 422
    run = _single_action_run("create_order", "orders-api", "order-7")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="undo order 7")
    engine.rollback_start(rollback=rollback, actor=alice)
    engine.step_run(step_id=rollback.steps.get().pk)
    engine.rollback_abort(
        rollback=rollback, actor=alice, reason="giving up, support will handle it"
    )
    rollback.refresh_from_db()
    assert rollback.state == R.FAILED
    notifications.escalate()
    notifications.escalate()
    kinds = sorted(Notification.objects.values_list("kind", "channel"))
    assert kinds == [("rollback_failed", "email"), ("rollback_failed", "webhook")]
    assert mail.outbox[0].subject == f"[Unwind] a rollback failed: rollback #{rollback.pk}"
    assert "Undone: 0 of 1 steps" in mail.outbox[0].body


def test_a_failed_webhook_is_retried_on_the_next_run_and_ledgered_once_per_error(
    hook, estate, people, alice
):
    rollback = _awaiting(alice)
    hook.failures[HOOK] = 500
    assert notifications.escalate(now=_later(16)) == {"sent": 1, "failed": 1, "skipped": 0}
    note = Notification.objects.get(channel="webhook")
    assert note.sent_at is None and f"POST {settings_url(hook)}: HTTP 500" in note.error
    assert notifications.escalate(now=_later(17)) == {"sent": 0, "failed": 1, "skipped": 1}
    failed = Entry.objects.filter(action="notification.failed", rollback_id=rollback.pk)
    assert failed.count() == 1 and failed.get().outcome == "failed"  # the same error: once
    hook.failures.pop(HOOK)
    assert notifications.escalate(now=_later(18)) == {"sent": 1, "failed": 0, "skipped": 1}
    note.refresh_from_db()
    assert note.sent_at is not None and note.error == ""
    assert len(_calls(hook)) == 1 and len(mail.outbox) == 1
    # Every attempt carried the same key, so a receiver could drop repeats.
    keys = {c["key"] for c in hook.calls if c["path"] == HOOK}
    assert keys == {f"unwind-notification-{note.pk}"} and len(hook.calls) == 3


def test_an_unreachable_webhook_is_a_failure_not_a_crash(settings, hook, estate, people, alice):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings.ESCALATION_WEBHOOK_URL = f"http://127.0.0.1:{port}/hook"
    _awaiting(alice)
    assert notifications.escalate(now=_later(16)) == {"sent": 1, "failed": 1, "skipped": 0}
    assert "ConnectError" in Notification.objects.get(channel="webhook").error


def test_a_claim_left_by_a_sender_that_died_is_taken_over(hook, estate, people, alice):
    rollback = _awaiting(alice)
    now = _later(16)
    (esc,) = notifications.due(now)
    note = Notification.objects.create(
        kind=esc.kind, rollback=rollback, subject_key=esc.subject_key, channel="webhook"
    )
    Notification.objects.filter(pk=note.pk).update(
        sent_at=now - timedelta(seconds=30), error=notifications.SENDING
    )
    assert notifications.deliver(esc, "webhook", notifications.send_webhook, now) == "skipped"
    Notification.objects.filter(pk=note.pk).update(sent_at=now - timedelta(minutes=2))
    assert notifications.deliver(esc, "webhook", notifications.send_webhook, now) == "sent"
    assert len(_calls(hook)) == 1


def test_without_channels_nothing_is_recorded(settings, estate, alice):
    settings.ESCALATION_WEBHOOK_URL = ""
    settings.ESCALATION_EMAILS = []
    _awaiting(alice)  # alice has no email address
    assert notifications.escalate(now=_later(16)) == {"sent": 0, "failed": 0, "skipped": 0}
    assert not Notification.objects.exists()


def test_recipients_are_the_teams_operators_and_approvers(hook, estate, people, alice):
    rollback = _awaiting(alice)
    assert notifications.email_recipients(rollback) == [
        "alice@example.com",
        "bob@example.com",
        "oncall@example.com",
    ]


def test_the_task_the_command_and_the_beat_schedule(settings, hook, estate, people, alice, capsys):
    assert settings.CELERY_BEAT_SCHEDULE["escalate"] == {
        "task": "governance.tasks.escalate",
        "schedule": 30.0,
    }
    run = _single_action_run("capture_payment", "payment-gateway", "pay-1")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="refund it")
    engine.rollback_start(rollback=rollback, actor=alice)
    assert tasks.escalate() == {"sent": 2, "failed": 0, "skipped": 0}
    call_command("escalate")
    assert capsys.readouterr().out.strip() == "sent: 0, failed: 0, skipped: 2"


def test_a_failed_drill_is_escalated_as_rehearsed_not_undone(hook, estate, people, alice):
    run = _single_action_run("create_order", "orders-api", "order-8")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="drill", is_drill=True)
    engine.rollback_start(rollback=rollback, actor=alice)
    rollback.steps.update(state=S.FAILED, last_error="injected fault")  # as a worker leaves it
    engine.rollback_abort(rollback=rollback, actor=alice, reason="the drill's fault held")
    rollback.refresh_from_db()
    # The engine stores a drill's words itself now (it stored "Undone: 0 of 1" before).
    assert rollback.state == R.FAILED and rollback.outcome_summary.startswith("Rehearsed: 0 of 1")
    notifications.escalate()
    body = mail.outbox[0].body
    assert "Rehearsed: 0 of 1 steps (a drill: nothing in production was touched)." in body
    assert "Not rehearsed: create_order on orders-api: failed: waiting for a human" in body
    assert "Undone" not in body
