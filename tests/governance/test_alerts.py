"""Alert-triggered rollbacks: the Alertmanager webhook (validation, storing, dedupe), the
trigger rules (matchers, thresholds, runs by id or external id) and what the policies let an
alert do (plan, and start only where every matching policy allows it)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from governance import alerts, tasks
from governance.models import Alert, ApprovalPolicy, TriggerRule
from ledger.models import Entry
from rollbacks import runs
from rollbacks.models import Outbox, Rollback
from rollbacks.tokens import token_create
from tests.rollbacks import engine_estate

URL = "/api/v1/alerts/alertmanager"
R = Rollback.State
STARTS = "2024-05-01T12:00:00.123456789Z"


# Helpers ---------------------------------------------------------------------------------------


def alert(fingerprint="fp-1", status="firing", starts=STARTS, **labels):
    labels = {"alertname": "CheckoutErrorRate", "severity": "critical"} | labels
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "checkout errors above 5%"},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2024-05-01T12:10:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def webhook(*items, group_key='{}:{alertname="CheckoutErrorRate"}', receiver="unwind"):
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in items) else "resolved",
        "receiver": receiver,
        "groupLabels": {"alertname": "CheckoutErrorRate"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(items),
    }


def post(client, body, token):
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(URL, data=raw, content_type="application/json", **headers)


def run_matching() -> dict[int, str]:
    """Run the matching tasks the webhook queued, in this process (what a worker does)."""
    outcomes: dict[int, str] = {}
    for row in Outbox.objects.filter(task=alerts.MATCH_ALERTS).order_by("pk"):
        outcomes |= tasks.match_alerts(**row.kwargs)
        row.delete()
    return outcomes


def fire(client, token, *items, **kw) -> dict[int, str]:
    response = post(client, webhook(*items, **kw), token)
    assert response.status_code == 200, response.content
    return run_matching()


def _policy(name, **kw):
    return ApprovalPolicy.objects.create(name=name, **kw)


def _account(django_user_model, username, *groups):
    user = django_user_model.objects.create_user(username)
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return user


@pytest.fixture
def estate(make_system, target_server):
    return engine_estate.build(make_system, target_server[0])


@pytest.fixture
def alertbot(django_user_model, teams):
    return _account(django_user_model, "alertmanager", "operator", "team:payments")


@pytest.fixture
def token(alertbot):
    return token_create(user=alertbot, name="alertmanager")[1]


@pytest.fixture
def run(estate):
    return engine_estate.failed_run(external_id="checkout-42", with_payment=False)


@pytest.fixture
def rule(db):
    return TriggerRule.objects.create(
        name="checkout-errors",
        match={"alertname": "CheckoutErrorRate", "severity": "=~critical|page"},
        run_label="process_run",
        reason_template="alert {alertname} fired on {instance} ({severity})",
    )


pytestmark = pytest.mark.django_db


# Validation --------------------------------------------------------------------------------------


def _with(path_and_value):
    body = webhook(alert("fp-0"), alert("fp-1"), alert("fp-2"))
    target, key, value = path_and_value
    node = body if target is None else body["alerts"][target]
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    return body


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ((2, "startsAt", "yesterday"), "alerts[2].startsAt", "not an RFC 3339 time"),
        ((1, "startsAt", "2024-05-01T12:00:00"), "alerts[1].startsAt", "not an RFC 3339 time"),
        ((0, "startsAt", "2024-05-01"), "alerts[0].startsAt", "not an RFC 3339 time"),
        ((0, "startsAt", "2024-02-30T12:00:00Z"), "alerts[0].startsAt", "not an RFC 3339 time"),
        ((0, "startsAt", KeyError), "alerts[0].startsAt", "not an RFC 3339 time"),
        ((1, "endsAt", "soon"), "alerts[1].endsAt", "not an RFC 3339 time"),
        ((1, "status", "pending"), "alerts[1].status", 'must be "firing" or "resolved"'),
        ((0, "labels", KeyError), "alerts[0].labels", "is required"),
        ((0, "labels", ["a", "b"]), "alerts[0].labels", "must be a mapping"),
        ((2, "labels", {"severity": 3}), "alerts[2].labels.severity", "must be a string"),
        ((0, "annotations", {"x": None}), "alerts[0].annotations.x", "must be a string"),
        ((1, "fingerprint", KeyError), "alerts[1].fingerprint", "is required"),
        ((1, "fingerprint", ""), "alerts[1].fingerprint", "is required"),
        ((None, "version", "3"), "version", 'must be "4"'),
        ((None, "version", 4), "version", 'must be "4"'),
        ((None, "version", KeyError), "version", "missing"),
        ((None, "groupKey", KeyError), "groupKey", "is required"),
        ((None, "alerts", []), "alerts", "non-empty list"),
        ((None, "alerts", {"a": 1}), "alerts", "non-empty list"),
        ((None, "status", "pending"), "status", 'must be "firing" or "resolved"'),
        # Unused fields keep their types too (schemathesis: generatorURL {} was accepted).
        ((0, "generatorURL", {}), "alerts[0].generatorURL", "must be a string"),
        ((None, "externalURL", 5), "externalURL", "must be a string"),
        ((None, "truncatedAlerts", "1"), "truncatedAlerts", "must be a whole number"),
        ((None, "commonLabels", {"a": 1}), "commonLabels.a", "must be a string"),
        # PostgreSQL stores offsets up to ±15:59 only: a 400, not a 500 that Alertmanager
        # would retry for ever (issue 16, finding 6).
        ((0, "startsAt", "2024-05-01T12:00:00+20:00"), "alerts[0].startsAt", "within ±15:59"),
        ((1, "endsAt", "2024-05-01T12:00:00-16:00"), "alerts[1].endsAt", "within ±15:59"),
        ((0, "startsAt", "0001-01-01T00:00:00+01:00"), "alerts[0].startsAt", "years 1 to 9999"),
    ],
)
def test_a_malformed_payload_gets_400_naming_the_problem_and_stores_nothing(
    client, token, rule, change, path, message
):
    response = post(client, _with(change), token)
    assert response.status_code == 400, response.content
    body = response.json()
    assert path in body["errors"] and message in body["errors"][path][0]
    assert f"{path}: " in body["detail"]
    assert Alert.objects.count() == 0  # not even the two good alerts of the same payload
    assert not Outbox.objects.filter(task=alerts.MATCH_ALERTS).exists()
    assert not Entry.objects.filter(action__startswith="alert.").exists()


def test_the_example_error_reads_as_documented(client, token):
    response = post(client, _with((2, "startsAt", "tuesday")), token)
    assert response.json()["detail"] == "alerts[2].startsAt: not an RFC 3339 time"


def test_every_problem_is_named_at_once(client, token):
    body = webhook(alert("fp-0", starts="x"), alert("", status="gone"))
    errors = post(client, body, token).json()["errors"]
    assert set(errors) == {"alerts[0].startsAt", "alerts[1].status", "alerts[1].fingerprint"}


@pytest.mark.parametrize(
    ("raw", "problem", "field"),
    [
        ("{not json", "not valid JSON", "body"),
        ("", "not valid JSON", "body"),
        ("[1, 2]", "must be a JSON object", "body"),
        ('{"version": NaN}', "NaN is not a JSON number", "body"),
        # What PostgreSQL would refuse is named by its field (issue 16, findings 7 and 8).
        ('{"version": "4\\u0000"}', "NUL character", "version"),
        (
            '{"alerts": [{"labels": {"x": "\\udbef\\ude10\\udbef"}}]}',
            "lone UTF-16",
            "alerts[0].labels.x",
        ),
        ('{"truncatedAlerts": 1e400}', "overflows to infinity", "truncatedAlerts"),
    ],
)
def test_a_body_that_is_not_a_webhook_is_refused(client, token, raw, problem, field):
    response = post(client, raw, token)
    assert response.status_code == 400
    assert problem in response.json()["detail"] and field in response.json()["errors"]
    assert Alert.objects.count() == 0


def test_without_a_token_or_role_nothing_is_stored(client, django_user_model, token):
    assert post(client, webhook(alert()), None).status_code == 401
    assert post(client, webhook(alert()), "unw_wrong").status_code == 401
    auditor = _account(django_user_model, "auditbot", "auditor")
    response = post(client, webhook(alert()), token_create(user=auditor, name="x")[1])
    assert response.status_code == 403 and "operator" in response.json()["detail"]
    assert Alert.objects.count() == 0
    assert Entry.objects.filter(action="alert.receive", outcome="refused").count() == 1


def test_rfc3339_parsing():
    parse = alerts.parse_rfc3339
    assert parse("2024-05-01T12:00:00.123456789Z") == datetime(
        2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC
    )
    assert parse("2024-05-01t12:00:00+02:00") == datetime(
        2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))
    )
    assert parse("2024-05-01T12:00:00.5-05:30").utcoffset() == -timedelta(hours=5, minutes=30)
    for bad in ("2024-05-01T12:00:00", "2024-05-01", "2024-W18-3T12:00:00Z", "12:00Z", 17, None):
        assert parse(bad) is None


# Storing and deduplicating --------------------------------------------------------------------


def test_a_webhook_is_stored_before_the_answer_and_matching_is_queued(
    client, token, rule, alertbot
):
    response = post(client, webhook(alert("fp-1", process_run="checkout-42")), token)
    assert response.status_code == 200
    body = response.json()
    assert body | {"alerts": None} == {
        "stored": 1,
        "duplicates": 0,
        "resolved": 0,
        "queued": 1,
        "matched": 1,
        "alerts": None,
    }
    stored = Alert.objects.get()
    assert body["alerts"] == [
        {
            "id": stored.pk,
            "fingerprint": "fp-1",
            "status": "firing",
            "starts_at": "2024-05-01T12:00:00.123Z",
            "duplicate": False,
            "rule": "checkout-errors",
        }
    ]
    assert stored.ends_at is None and stored.outcome == "" and stored.receiver == "unwind"
    assert stored.labels["process_run"] == "checkout-42"
    assert stored.annotations == {"summary": "checkout errors above 5%"}
    received = Entry.objects.get(action="alert.received")
    assert received.actor_user == alertbot and received.subject_id == str(stored.pk)
    (queued,) = Outbox.objects.filter(task=alerts.MATCH_ALERTS)
    assert queued.kwargs == {
        "alert_ids": [stored.pk],
        "group_alert_ids": [stored.pk],
        "actor_id": alertbot.pk,
    }


def test_the_same_alert_twice_is_one_row(client, token, rule):
    first = post(client, webhook(alert("fp-1")), token).json()
    again = post(client, webhook(alert("fp-1")), token).json()  # Alertmanager's repeat
    assert (first["stored"], again["stored"], again["duplicates"]) == (1, 0, 1)
    assert again["alerts"][0]["duplicate"] and again["queued"] == 0
    assert Alert.objects.count() == 1
    assert Entry.objects.filter(action="alert.received").count() == 1
    assert Outbox.objects.filter(task=alerts.MATCH_ALERTS).count() == 1


def test_a_new_occurrence_of_the_same_alert_is_a_new_row(client, token):
    post(client, webhook(alert("fp-1")), token)
    post(client, webhook(alert("fp-1", starts="2024-05-02T08:00:00Z")), token)
    assert Alert.objects.count() == 2


def test_ha_pair_duplicates_are_stored_once(client, token):
    """Both Alertmanagers of an HA pair notify: same alerts, their own receiver and URL."""
    items = [alert("fp-1"), alert("fp-2", instance="b")]
    first = post(client, webhook(*items, receiver="unwind"), token).json()
    peer = webhook(*items, receiver="unwind")
    peer["externalURL"] = "http://alertmanager-2:9093"
    second = post(client, peer, token).json()
    assert (first["stored"], second["stored"], second["duplicates"]) == (2, 0, 2)
    assert Alert.objects.count() == 2


def test_the_same_alert_twice_in_one_payload_is_one_row(client, token):
    body = post(client, webhook(alert("fp-1"), alert("fp-1")), token).json()
    assert (body["stored"], body["duplicates"]) == (1, 1) and Alert.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_ha_pair_posting_at_the_same_moment_stores_each_alert_once(token, rule):
    from django.test import Client

    barrier = threading.Barrier(8)
    answers: list[int] = []
    body = webhook(alert("fp-1"), alert("fp-2", instance="b"), alert("fp-3", instance="c"))

    def deliver():
        try:
            barrier.wait()
            answers.append(post(Client(), body, token).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [200] * 8
    assert Alert.objects.count() == 3
    assert Entry.objects.filter(action="alert.received").count() == 3


def test_a_resolved_alert_is_recorded_and_plans_nothing(client, token, rule, run):
    fire(client, token, alert("fp-1", process_run="checkout-42"))
    rollback = Rollback.objects.get()
    body = post(client, webhook(alert("fp-1", status="resolved", process_run="checkout-42")), token)
    assert body.json()["resolved"] == 1 and body.json()["queued"] == 0
    assert run_matching() == {}
    resolved = Alert.objects.get(status="resolved")
    assert resolved.ends_at == datetime(2024, 5, 1, 12, 10, tzinfo=UTC)
    assert resolved.outcome.startswith("resolved: recorded; a resolved alert never plans anything")
    assert resolved.rollback == rollback and resolved.rule == rule
    assert Entry.objects.get(action="alert.resolved").payload["firing_alert"] == (
        Alert.objects.get(status="firing").pk
    )
    assert Rollback.objects.count() == 1


def test_an_alert_resolved_before_it_was_matched_plans_nothing(client, token, rule, run):
    post(client, webhook(alert("fp-1", process_run="checkout-42")), token)
    post(client, webhook(alert("fp-1", status="resolved", process_run="checkout-42")), token)
    assert run_matching() == {
        Alert.objects.get(status="firing").pk: "resolved before it was matched: nothing planned"
    }
    assert not Rollback.objects.exists()


# Matchers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ("critical", "critical", True),
        ("critical", "critical-ish", False),
        ("critical", "", False),
        ("=~critical|page", "page", True),
        ("=~crit", "critical", False),  # a regex matches the whole value
        ("=~crit.*", "critical", True),
        ("=~.*", "", True),  # an absent label is the empty string
        ("!=info", "critical", True),
        ("!=info", "info", False),
        ("!=info", "", True),
        ("!~info|debug", "debug", False),
        ("!~info|debug", "critical", True),
        ("!~info|debug", "", True),
        ("=!=x", "!=x", True),  # "=" makes the rest an exact value
        ("==~x", "=~x", True),
        ("", "", True),
        ("", "x", False),
        (5, "5", True),
    ],
)
def test_matcher_semantics(spec, value, expected):
    assert alerts.parse_matcher(spec)(value) is expected


def test_unusable_matchers_are_named():
    assert alerts.matcher_errors({"a": "=~(", "b": ["x"], "c": True, "d": "ok"}) == [
        ("a", "invalid regular expression '(': missing ), unterminated subpattern at position 0"),
        ("b", "must be a string: a value, =~regex, !=value or !~regex"),
        ("c", "must be a string: a value, =~regex, !=value or !~regex"),
    ]
    assert alerts.matcher_errors("x") == [("match", "must be a mapping of label names to matchers")]


def test_labels_match_needs_every_matcher():
    match = {"alertname": "CheckoutErrorRate", "env": "!=staging", "team": "=~pay.*"}
    assert alerts.labels_match(match, {"alertname": "CheckoutErrorRate", "team": "payments"})
    assert not alerts.labels_match(
        match, {"alertname": "CheckoutErrorRate", "team": "payments", "env": "staging"}
    )
    assert not alerts.labels_match(match, {"alertname": "CheckoutErrorRate"})
    assert alerts.labels_match({}, {"anything": "x"})  # no matcher: every alert


def test_the_reason_template_fills_labels_and_leaves_the_rest_literal():
    labels = {"alertname": "CheckoutErrorRate", "instance": "web-1"}
    assert (
        alerts.render_reason(
            "{alertname} on {instance}: {missing} {0} {alertname.__class__}", labels
        )
        == "CheckoutErrorRate on web-1: {missing} {0} {alertname.__class__}"
    )


def test_no_rule_matched_is_recorded(client, token, rule, run):
    outcomes = fire(client, token, alert("fp-1", severity="info", process_run="checkout-42"))
    assert list(outcomes.values()) == ["no rule matched"]
    stored = Alert.objects.get()
    assert stored.outcome == "no rule matched" and stored.rule is None
    assert Entry.objects.get(action="alert.unmatched").reason == "no rule matched"
    assert not Rollback.objects.exists()


def test_an_unusable_rule_is_skipped_and_said(client, token, rule, run):
    TriggerRule.objects.create(name="broken", match={"alertname": "=~("})
    rule.is_active = False
    rule.save()
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    assert outcome.startswith("no rule matched (skipped unusable rules: broken: alertname:")


def test_the_first_matching_rule_by_name_applies(client, token, rule, run):
    TriggerRule.objects.create(name="a-any-critical", match={"severity": "critical"}, drill=True)
    fire(client, token, alert("fp-1", process_run="checkout-42"))
    stored = Alert.objects.get()
    assert stored.rule.name == "a-any-critical" and stored.rollback.is_drill


# Thresholds ------------------------------------------------------------------------------------


def test_a_threshold_counts_the_firing_alerts_of_the_group(client, token, rule, run):
    rule.min_alerts = 2
    rule.save()
    first = alert("fp-1", instance="web-1", process_run="checkout-42")
    (outcome,) = fire(client, token, first).values()
    assert outcome == (
        "below threshold: 1 of 2 firing alerts of the group match rule checkout-errors"
    )
    assert not Rollback.objects.exists()
    # The next notification of the group carries both; the first is a duplicate.
    second = alert("fp-2", instance="web-2", process_run="checkout-42")
    outcomes = fire(client, token, first, second)
    rollback = Rollback.objects.get()
    assert outcomes == {
        Alert.objects.get(fingerprint="fp-2").pk: f"planned rollback #{rollback.pk}; approved "
        "but not started: no approval policy applies, and only a policy lets an alert start "
        "a rollback"
    }


def test_a_threshold_ignores_alerts_that_do_not_match_and_resolved_ones(client, token, rule, run):
    rule.min_alerts = 2
    rule.save()
    outcomes = fire(
        client,
        token,
        alert("fp-1", process_run="checkout-42"),
        alert("fp-2", severity="info", process_run="checkout-42"),
        alert("fp-3", status="resolved", process_run="checkout-42"),
    )
    assert [o.split(":")[0] for o in outcomes.values()] == ["below threshold", "no rule matched"]


def test_two_new_alerts_reaching_the_threshold_plan_one_rollback(client, token, rule, run):
    rule.min_alerts = 2
    rule.save()
    outcomes = fire(
        client,
        token,
        alert("fp-1", instance="a", process_run="checkout-42"),
        alert("fp-2", instance="b", process_run="checkout-42"),
    )
    rollback = Rollback.objects.get()
    assert sorted(outcomes.values()) == [
        f"a rollback of this run is already under way: #{rollback.pk}",
        f"planned rollback #{rollback.pk}; approved but not started: no approval policy "
        "applies, and only a policy lets an alert start a rollback",
    ]
    assert set(Alert.objects.values_list("rollback", flat=True)) == {rollback.pk}


# Runs -----------------------------------------------------------------------------------------


def test_the_run_is_found_by_its_external_id(client, token, rule, run, alertbot):
    fire(client, token, alert("fp-1", process_run="checkout-42", instance="web-1"))
    rollback = Rollback.objects.get()
    assert rollback.run == run and rollback.trigger == "alert" and not rollback.is_drill
    assert rollback.requested_by == alertbot
    assert rollback.reason == "alert CheckoutErrorRate fired on web-1 (critical)"
    stored = Alert.objects.get()
    assert (stored.rule, stored.rollback) == (rule, rollback)
    matched = Entry.objects.get(action="alert.matched")
    assert matched.rollback_id == rollback.pk and matched.payload["run"] == run.pk
    assert matched.reason == stored.outcome and matched.actor_user == alertbot


def test_the_run_is_found_by_its_id(client, token, rule, run):
    fire(client, token, alert("fp-1", process_run=str(run.pk)))
    assert Rollback.objects.get().run == run


def test_an_unknown_run_is_recorded(client, token, rule, run):
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-999")).values()
    assert (
        outcome
        == "run not found: process_run='checkout-999' names no process run (by id or external id)"
    )
    assert Entry.objects.get(action="alert.matched").outcome == "refused"


def test_an_alert_without_the_run_label_is_recorded(client, token, rule, run):
    (outcome,) = fire(client, token, alert("fp-1")).values()
    assert outcome == "run not found: the alert has no process_run label naming the run"


def test_an_ambiguous_run_is_not_guessed(client, token, rule, run):
    runs.run_register(process="other", external_id="checkout-42", actor="test")
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    assert outcome.startswith("run not found: process_run='checkout-42' is ambiguous: it names run")
    assert not Rollback.objects.exists()


def test_a_custom_run_label(client, token, rule, run):
    rule.run_label = "job_run"
    rule.save()
    fire(client, token, alert("fp-1", job_run="checkout-42"))
    assert Rollback.objects.get().run == run


def test_a_run_with_a_rollback_under_way_gets_no_second_one(client, token, rule, run):
    fire(client, token, alert("fp-1", process_run="checkout-42"))
    first = Rollback.objects.get()
    (outcome,) = fire(
        client, token, alert("fp-2", instance="b", process_run="checkout-42")
    ).values()
    assert outcome == f"a rollback of this run is already under way: #{first.pk}"
    assert Rollback.objects.count() == 1


# Who plans ------------------------------------------------------------------------------------


def test_the_rules_service_account_plans(client, token, rule, run, django_user_model):
    bot = _account(django_user_model, "rule-bot", "operator", "team:payments")
    rule.service_account = bot
    rule.save()
    fire(client, token, alert("fp-1", process_run="checkout-42"))
    assert Rollback.objects.get().requested_by == bot


def test_an_account_outside_the_runs_teams_is_refused(client, token, rule, run, django_user_model):
    rule.service_account = _account(django_user_model, "platform-bot", "operator", "team:platform")
    rule.save()
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    assert (
        outcome
        == "refused: platform-bot: only an operator of the run's teams may plan its rollback"
    )
    assert Entry.objects.filter(action="rollback.plan", outcome="refused").exists()
    assert not Rollback.objects.exists()


def test_matching_twice_changes_nothing(client, token, rule, run):
    post(client, webhook(alert("fp-1", process_run="checkout-42")), token)
    (row,) = Outbox.objects.filter(task=alerts.MATCH_ALERTS)
    assert len(tasks.match_alerts(**row.kwargs)) == 1
    assert tasks.match_alerts(**row.kwargs) == {}  # the message delivered again
    assert Rollback.objects.count() == 1
    assert Entry.objects.filter(action="alert.matched").count() == 1


def test_an_alert_whose_message_was_lost_is_matched_by_the_sweep(
    client, token, rule, run, alertbot
):
    post(client, webhook(alert("fp-1", process_run="checkout-42")), token)
    Outbox.objects.all().delete()  # the message is gone
    assert alerts.alerts_match_stale(older_than=timedelta(minutes=5)) == {}  # too recent
    (outcome,) = alerts.alerts_match_stale(older_than=timedelta(0)).values()
    assert outcome.startswith("planned rollback #")
    assert Rollback.objects.get().requested_by == alertbot


# Policies decide whether an alert may start it -------------------------------------------------


def test_an_auto_start_policy_lets_the_alert_start_the_rollback(client, token, rule, run):
    _policy("alert-auto", trigger_kinds=["alert"], approvals_required=0, auto_start=True)
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    rollback = Rollback.objects.get()
    assert rollback.state == R.RUNNING
    assert (
        outcome
        == f"planned rollback #{rollback.pk} and started it (policy alert-auto let an alert start it)"
    )
    assert Entry.objects.filter(action="rollback.started", rollback_id=rollback.pk).exists()
    assert Entry.objects.get(action="alert.matched").payload["started"] is True
    assert Outbox.objects.filter(task="rollbacks.tasks.run_step").exists()  # stage 1 queued


def test_a_policy_needing_approval_wins_over_auto_start(client, token, rule, run):
    _policy("alert-auto", trigger_kinds=["alert"], approvals_required=0, auto_start=True)
    _policy("critical", tiers=[1], approvals_required=1)
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    rollback = Rollback.objects.get()
    assert rollback.state == R.AWAITING_APPROVAL
    assert (
        outcome
        == f"planned rollback #{rollback.pk}; awaiting approval (policies alert-auto, critical)"
    )


def test_a_policy_that_does_not_allow_auto_start_leaves_it_approved(client, token, rule, run):
    _policy("alert-auto", trigger_kinds=["alert"], approvals_required=0, auto_start=True)
    _policy("low-tier", tiers=[3], approvals_required=0, auto_start=False)
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    rollback = Rollback.objects.get()
    assert rollback.state == R.APPROVED
    assert outcome == (
        f"planned rollback #{rollback.pk}; approved but not started: policies alert-auto, "
        "low-tier do not all let an alert start it"
    )


def test_only_the_critical_policy_gives_the_awaiting_approval_text(client, token, rule, run):
    _policy("critical", tiers=[1], approvals_required=2)
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    rollback = Rollback.objects.get()
    assert outcome == f"planned rollback #{rollback.pk}; awaiting approval (policy critical)"


def test_a_drill_rule_plans_a_drill(client, token, rule, run):
    rule.drill = True
    rule.save()
    _policy("drills-auto", drill_scope="drill", approvals_required=0, auto_start=True)
    (outcome,) = fire(client, token, alert("fp-1", process_run="checkout-42")).values()
    rollback = Rollback.objects.get()
    assert rollback.is_drill and rollback.state == R.RUNNING
    assert outcome.startswith(f"planned rollback #{rollback.pk} (a drill) and started it")


def test_a_run_with_nothing_to_undo_is_recorded(client, token, rule, estate):
    empty, _ = runs.run_register(process="checkout-migration", external_id="empty", actor="test")
    runs.action_report(  # it had no effect: nothing to undo
        run=empty,
        system_slug="orders-api",
        action_type="create_order",
        idempotency_key="k",
        actor="test",
        status="failed",
    )
    (outcome,) = fire(client, token, alert("fp-1", process_run="empty")).values()
    assert outcome.startswith("could not plan: ") and "nothing to undo" in outcome


def test_the_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/v1/openapi.json").json()
    operation = schema["paths"]["/api/v1/alerts/alertmanager"]["post"]
    assert operation["tags"] == ["alerts"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["version"]["enum"] == ["4"]
    assert {"200", "400", "401", "403"} <= set(operation["responses"])


def _printed_config() -> str:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "alertmanager_config", "https://unwind.example.com/",
        "--credentials-file", "/etc/alertmanager/unwind.token", stdout=out,
    )  # fmt: skip
    return out.getvalue()


def test_the_config_command_prints_the_receiver_with_its_token_file():
    import yaml

    config = yaml.safe_load(_printed_config())
    (hook,) = config["receivers"][0]["webhook_configs"]
    assert hook["url"] == "https://unwind.example.com/api/v1/alerts/alertmanager"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == (
        "/etc/alertmanager/unwind.token"
    )


@pytest.mark.tools("amtool")
def test_amtool_accepts_the_printed_configuration(tmp_path):
    import subprocess

    path = tmp_path / "alertmanager.yml"
    path.write_text(_printed_config())
    check = subprocess.run(
        ["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
