"""Governance in Django admin: policies and trigger rules are validated and every change or
deletion is ledgered; approvals, break-glass, alerts and notifications are read-only;
incident grants go through the service."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse
from django.utils import timezone

from governance import services
from governance.models import (
    Alert,
    Approval,
    ApprovalPolicy,
    BreakGlass,
    IncidentGrant,
    Notification,
    TriggerRule,
)
from ledger.models import Entry
from rollbacks import engine
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db


def _policy_post(**overrides) -> dict:
    data = {
        "name": "critical",
        "description": "",
        "is_active": "on",
        "tiers": "[1]",
        "environments": "[]",
        "trigger_kinds": "[]",
        "drill_scope": "any",
        "approvals_required": "2",
        "four_eyes": "on",
        "expires_after_s": "1800",
        "attestations": '[{"key": "pii", "label": "Personal data impact checked"}]',
        "gate_tiers": "[]",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _rule_post(**overrides) -> dict:
    data = {
        "name": "checkout-errors",
        "is_active": "on",
        "match": '{"alertname": "CheckoutErrorRate", "severity": "=~critical|page"}',
        "min_alerts": "1",
        "run_label": "process_run",
        "reason_template": "alert {alertname} fired",
        "service_account": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.fixture
def admin_client(client, dave):
    client.force_login(dave)
    return client


ADD_POLICY = "admin:governance_approvalpolicy_add"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tiers", "[0, 5]", "Tiers are whole numbers from 1 (most critical) to 4: 0, 5 is not."),
        ("tiers", '"1"', "A list of tiers"),
        ("gate_tiers", "[true]", "Tiers are whole numbers from 1"),
        (
            "trigger_kinds",
            '["cron"]',
            "Unknown trigger kind &#x27;cron&#x27;: use manual, api, alert, runbook.",
        ),
        ("environments", '[""]', "A list of environment names"),
        ("attestations", '{"pii": "x"}', "A list of attestations"),
        ("attestations", '[{"key": "pii"}]', "attestation 1: label is required"),
        ("attestations", '[{"key": "Bad Key", "label": "x"}]', "attestation 1: key is required"),
        (
            "attestations",
            '[{"key": "pii", "label": "a"}, {"key": "pii", "label": "b"}]',
            "attestation 2: key &#x27;pii&#x27; is listed twice.",
        ),
        ("attestations", '[{"key": "pii", "label": "x", "by": 1}]', "unknown field by"),
        ("expires_after_s", "10", "Ensure this value is greater than or equal to 60."),
    ],
)
def test_invalid_policy_is_refused_naming_the_problem(admin_client, field, value, message):
    response = admin_client.post(reverse(ADD_POLICY), _policy_post(**{field: value}))
    assert response.status_code == 200  # the form again, with the error
    assert message in response.content.decode()
    assert ApprovalPolicy.objects.count() == 0
    assert not Entry.objects.filter(action__startswith="policy.").exists()


def test_policy_changes_and_deletions_are_ledgered(admin_client, dave):
    approvers = Group.objects.get(name="approver")
    response = admin_client.post(
        reverse(ADD_POLICY),
        _policy_post(tiers="[2, 1, 1]", eligible_groups=str(approvers.pk)),
    )
    assert response.status_code == 302, response.content.decode()
    policy = ApprovalPolicy.objects.get()
    assert policy.tiers == [1, 2] and list(policy.eligible_groups.all()) == [approvers]
    created = Entry.objects.get(action="policy.created")
    assert created.actor_user == dave and created.subject_id == str(policy.pk)
    assert "tiers" in created.payload["changed"]
    assert created.payload["values"]["eligible_groups"] == ["approver"]

    change = reverse("admin:governance_approvalpolicy_change", args=[policy.pk])
    data = _policy_post(tiers="[1, 2]", approvals_required="3", eligible_groups=str(approvers.pk))
    assert admin_client.post(change, data).status_code == 302
    changed = Entry.objects.get(action="policy.changed")
    assert changed.payload["changed"] == ["approvals_required"]
    assert changed.payload["values"] == {"approvals_required": 3}

    delete = reverse("admin:governance_approvalpolicy_delete", args=[policy.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not ApprovalPolicy.objects.exists()
    assert Entry.objects.get(action="policy.deleted").payload == {"name": "critical"}


def test_deleting_policies_from_the_list_ledgers_each(admin_client):
    a = ApprovalPolicy.objects.create(name="a")
    b = ApprovalPolicy.objects.create(name="b")
    response = admin_client.post(
        reverse("admin:governance_approvalpolicy_changelist"),
        {"action": "delete_selected", "_selected_action": [a.pk, b.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert not ApprovalPolicy.objects.exists()
    deleted = Entry.objects.filter(action="policy.deleted")
    assert sorted(e.payload["name"] for e in deleted) == ["a", "b"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"match": '["alertname"]'}, "A mapping of label names to matchers"),
        ({"match": '{"severity": 3}'}, "severity: the matcher must be a string"),
        ({"match": '{"bad-label": "x"}'}, "&#x27;bad-label&#x27; is not a label name"),
        ({"match": '{"alertname": "=~("}'}, "alertname: invalid regular expression"),
        ({"run_label": ""}, "This field is required."),
        ({"run_label": "process run"}, "is not a label name"),
        ({"min_alerts": "0"}, "At least 1"),
    ],
)
def test_invalid_trigger_rule_is_refused(admin_client, overrides, message):
    response = admin_client.post(
        reverse("admin:governance_triggerrule_add"), _rule_post(**overrides)
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert TriggerRule.objects.count() == 0
    assert not Entry.objects.filter(action__startswith="trigger_rule.").exists()


def test_trigger_rule_service_account_needs_the_operator_role(admin_client, carol, alice):
    add = reverse("admin:governance_triggerrule_add")
    response = admin_client.post(add, _rule_post(service_account=str(carol.pk)))
    assert "it must be active and have the operator role" in response.content.decode()
    assert admin_client.post(add, _rule_post(service_account=str(alice.pk))).status_code == 302


def test_trigger_rule_changes_and_deletions_are_ledgered(admin_client):
    add = reverse("admin:governance_triggerrule_add")
    assert admin_client.post(add, _rule_post()).status_code == 302
    rule = TriggerRule.objects.get()
    assert rule.match == {"alertname": "CheckoutErrorRate", "severity": "=~critical|page"}
    assert Entry.objects.get(action="trigger_rule.created").subject_id == str(rule.pk)
    change = reverse("admin:governance_triggerrule_change", args=[rule.pk])
    assert admin_client.post(change, _rule_post(min_alerts="3")).status_code == 302
    assert Entry.objects.get(action="trigger_rule.changed").payload["values"] == {"min_alerts": 3}
    delete = reverse("admin:governance_triggerrule_delete", args=[rule.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert Entry.objects.filter(action="trigger_rule.deleted").count() == 1


@pytest.fixture
def records(make_system, target_server, alice, bob, carol):
    """An approval, a break-glass with a review, an alert and a notification."""
    engine_estate.build(make_system, target_server[0])
    ApprovalPolicy.objects.create(name="critical", tiers=[1], approvals_required=2)
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    approval = services.rollback_approve(rollback=rollback, approver=bob, comment="ok")
    alice.user_permissions.add(Permission.objects.get(codename="use_break_glass"))
    alice = type(alice).objects.get(pk=alice.pk)
    services.rollback_break_glass(rollback=rollback, actor=alice, reason="double charging now")
    services.break_glass_review(rollback=rollback, reviewer=carol, comment="justified")
    alert = Alert.objects.create(
        group_key="{}:{}",
        fingerprint="abc",
        status="firing",
        starts_at=timezone.now(),
        labels={"alertname": "CheckoutErrorRate"},
    )
    notification = Notification.objects.create(
        kind=Notification.Kind.BREAK_GLASS, rollback=rollback, subject_key="bg", channel="email"
    )
    return {
        "approval": approval,
        "breakglass": BreakGlass.objects.get(),
        "alert": alert,
        "notification": notification,
    }


@pytest.mark.parametrize("model", ["approval", "breakglass", "alert", "notification"])
def test_records_are_read_only_in_admin(admin_client, records, model):
    obj = records[model]
    changelist = admin_client.get(reverse(f"admin:governance_{model}_changelist"))
    assert changelist.status_code == 200
    assert admin_client.get(reverse(f"admin:governance_{model}_add")).status_code == 403
    change_url = reverse(f"admin:governance_{model}_change", args=[obj.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    admin_client.post(change_url, {})
    assert (
        admin_client.post(
            reverse(f"admin:governance_{model}_delete", args=[obj.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert type(obj).objects.filter(pk=obj.pk).exists()


def test_break_glass_admin_shows_its_reviews(admin_client, records):
    page = admin_client.get(
        reverse("admin:governance_breakglass_change", args=[records["breakglass"].pk])
    ).content.decode()
    assert "justified" in page and "double charging now" in page


def test_incident_grants_are_made_through_the_service_and_ended_early(admin_client, mallory):
    payments = Group.objects.get(name="team:payments")
    add = reverse("admin:governance_incidentgrant_add")
    page = admin_client.get(add).content.decode()
    assert "team:payments" in page and ">operator<" not in page  # only team groups
    too_long = admin_client.post(
        add, {"user": mallory.pk, "team_group": payments.pk, "reason": "INC-1", "hours": "100"}
    )
    assert too_long.status_code == 200 and IncidentGrant.objects.count() == 0
    response = admin_client.post(
        add, {"user": mallory.pk, "team_group": payments.pk, "reason": "INC-1", "hours": "2"}
    )
    assert response.status_code == 302
    grant = IncidentGrant.objects.get()
    assert grant.granted_by.username == "dave"
    assert timedelta(hours=1.9) < grant.expires_at - timezone.now() <= timedelta(hours=2)
    assert Entry.objects.filter(action="grant.created").count() == 1
    response = admin_client.post(
        reverse("admin:governance_incidentgrant_changelist"),
        {"action": "end_now", "_selected_action": [grant.pk]},
    )
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.expires_at <= timezone.now()
    assert Entry.objects.get(action="grant.ended").payload["user"] == "mallory"


def test_approvals_cannot_be_forged_in_admin(admin_client, records):
    assert Approval.objects.count() == 1
    admin_client.post(reverse("admin:governance_approval_add"), {"comment": "forged"})
    assert Approval.objects.count() == 1
