"""A policy may pre-approve runbook versions: the approvals of broad policies (naming
neither systems nor runbooks) are waived for their instances; targeted policies still
count, strictest wins among them; gates stay. Admin and the estate document check it."""

from __future__ import annotations

import copy

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from governance.models import ApprovalPolicy, PolicyDecision
from ledger.models import Entry
from rollbacks import engine, runs
from rollbacks.estate import EstateError, export_document, import_document
from rollbacks.models import Rollback
from runbooks import services
from tests.runbooks.conftest import GOOD_VALUES, PARAMETERS, STEPS

pytestmark = pytest.mark.django_db
R = Rollback.State


def _policy(name, *, approvals=1, runbooks=(), systems=(), preapproves=False, **fields):
    policy = ApprovalPolicy.objects.create(
        name=name, approvals_required=approvals, preapproves_runbooks=preapproves, **fields
    )
    policy.runbooks.set(runbooks)
    policy.systems.set(systems)
    return policy


def _instantiate(version, actor):
    return services.runbook_instantiate(
        version=version, actor=actor, values=GOOD_VALUES, reason="incident 42"
    )


def _requirements(rollback):
    return PolicyDecision.objects.get(rollback=rollback).requirements


@pytest.fixture
def critical(rb):
    policy = _policy(
        "critical", approvals=2, tiers=[1], attestations=[{"key": "pii", "label": "PII"}]
    )
    policy.eligible_groups.set([Group.objects.get_or_create(name="approver")[0]])
    return policy


def test_a_pre_approval_waives_the_approvals_of_a_broad_policy(rb, alice, critical):
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    rollback = _instantiate(rb.own_v1, alice)
    assert rollback.state == R.APPROVED
    req = _requirements(rollback)
    assert req["approvals"] == 0 and req["attestations"] == [] and req["eligible_groups"] is None
    assert req["preapproved_by"] == ["checkout-preapproved"] and req["waived"] == ["critical"]
    decision = PolicyDecision.objects.get(rollback=rollback)
    assert "Pre-approved by checkout-preapproved, waiving the approvals of critical" in (
        decision.explanation
    )
    assert set(decision.policies.values_list("name", flat=True)) == {
        "critical",
        "checkout-preapproved",
    }


def test_without_the_pre_approval_the_broad_policy_applies(rb, alice, critical):
    rollback = _instantiate(rb.own_v1, alice)
    assert rollback.state == R.AWAITING_APPROVAL
    assert _requirements(rollback)["approvals"] == 2


def test_a_policy_naming_the_systems_is_stricter_and_still_counts(rb, alice, critical):
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    _policy("billing-db-owner", approvals=1, systems=[rb.systems["billing-db"]])
    rollback = _instantiate(rb.own_v1, alice)
    assert rollback.state == R.AWAITING_APPROVAL
    req = _requirements(rollback)
    assert req["approvals"] == 1 and req["waived"] == ["critical"]


def test_a_policy_naming_the_runbook_without_pre_approving_still_counts(rb, alice):
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    _policy("checkout-two-eyes", approvals=1, runbooks=[rb.own_v1])
    rollback = _instantiate(rb.own_v1, alice)
    assert rollback.state == R.AWAITING_APPROVAL and _requirements(rollback)["approvals"] == 1


def test_a_pre_approval_covers_only_the_versions_it_names(rb, alice, critical):
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    v2 = services.runbook_version_publish(
        runbook=rb.own, parameters=PARAMETERS, steps=STEPS, actor="test"
    )
    rollback = _instantiate(v2, alice)
    assert rollback.state == R.AWAITING_APPROVAL
    req = _requirements(rollback)
    assert req["approvals"] == 2 and req["preapproved_by"] == [] and req["policies"] == ["critical"]


def test_a_pre_approval_does_not_touch_a_rollback_of_a_reported_run(rb, alice, critical):
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    run, _ = runs.run_register(process="p", external_id="1", actor="test")
    runs.action_report(
        run=run,
        system_slug="billing-db",
        action_type="insert_ledger_row",
        idempotency_key="k",
        actor="test",
    )
    rollback = engine.rollback_plan(run=run, actor=alice, reason="r")
    assert rollback.state == R.AWAITING_APPROVAL
    assert _requirements(rollback)["policies"] == ["critical"]


def test_gates_of_a_waived_policy_stay(rb, alice):
    _policy("gated", approvals=1, tiers=[1], gate_tiers=[1])
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    rollback = _instantiate(rb.own_v1, alice)
    req = _requirements(rollback)
    assert rollback.state == R.APPROVED and req["approvals"] == 0 and req["gate_tiers"] == [1]


def test_policies_can_scope_on_the_runbook_trigger(rb, alice):
    _policy("manual-only", approvals=1, trigger_kinds=["manual"])
    _policy("runbooks-need-one", approvals=1, trigger_kinds=["runbook"])
    rollback = _instantiate(rb.own_v1, alice)
    assert _requirements(rollback)["policies"] == ["runbooks-need-one"]
    assert PolicyDecision.objects.get(rollback=rollback).trigger_kind == "runbook"


# Admin ---------------------------------------------------------------------------------------


def _admin_post(**overrides):
    data = {
        "name": "preapproved",
        "is_active": "on",
        "tiers": "[]",
        "environments": "[]",
        "trigger_kinds": "[]",
        "drill_scope": "any",
        "approvals_required": "0",
        "four_eyes": "on",
        "attestations": "[]",
        "gate_tiers": "[]",
        "preapproves_runbooks": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({}, "runbooks", "Name the runbook versions this policy pre-approves"),
        ({"approvals_required": "1"}, "approvals_required", "asks for no approval itself"),
    ],
)
def test_admin_refuses_a_pre_approval_naming_the_field(rb, client, dave, overrides, field, message):
    client.force_login(dave)
    data = _admin_post(**overrides)
    if field != "runbooks":
        data["runbooks"] = [str(rb.own_v1.pk)]
    response = client.post(reverse("admin:governance_approvalpolicy_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field])
    assert not ApprovalPolicy.objects.exists()


def test_admin_saves_a_pre_approval_and_ledgers_it(rb, client, dave):
    client.force_login(dave)
    data = _admin_post(runbooks=[str(rb.own_v1.pk)])
    response = client.post(reverse("admin:governance_approvalpolicy_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    policy = ApprovalPolicy.objects.get()
    assert policy.preapproves_runbooks and list(policy.runbooks.all()) == [rb.own_v1]
    entry = Entry.objects.get(action="policy.created")
    assert entry.payload["values"]["runbooks"] == ["checkout-off v1"]
    assert entry.payload["values"]["preapproves_runbooks"] is True


# The estate document -------------------------------------------------------------------------


def test_the_estate_document_round_trips_a_pre_approval(rb, alice, critical):
    _policy("checkout-preapproved", approvals=0, runbooks=[rb.own_v1], preapproves=True)
    doc = export_document()
    exported = next(p for p in doc["policies"] if p["name"] == "checkout-preapproved")
    assert exported["scope"] == {"runbooks": ["checkout-off@1"]}
    assert exported["preapproves_runbooks"] is True
    assert import_document(copy.deepcopy(doc), actor="test").changes == []
    exported["scope"]["runbooks"] = ["reindex@1"]
    changes = import_document(copy.deepcopy(doc), actor="test").changes
    assert changes == ["~ policy checkout-preapproved: runbooks → ['reindex@1']"]
    assert list(ApprovalPolicy.objects.get(name="checkout-preapproved").runbooks.all()) == [
        rb.foreign_v1
    ]


@pytest.mark.parametrize(
    ("policy", "path", "message"),
    [
        (
            {"scope": {"runbooks": ["checkout-off@9"]}, "approvals": 0},
            "policies[0].scope.runbooks[0]",
            "unknown runbook version 'checkout-off@9'",
        ),
        (
            {"scope": {"runbooks": ["checkout-off"]}, "approvals": 0},
            "policies[0].scope.runbooks[0]",
            "write <slug>@<version>",
        ),
        (
            {"approvals": 0, "preapproves_runbooks": True},
            "policies[0].scope.runbooks",
            "Name the runbook versions",
        ),
        (
            {
                "scope": {"runbooks": ["checkout-off@1"]},
                "approvals": 2,
                "preapproves_runbooks": True,
            },
            "policies[0].approvals",
            "asks for no approval itself",
        ),
    ],
)
def test_the_estate_document_names_a_bad_runbook_reference(rb, policy, path, message):
    doc = export_document() | {"policies": [{"name": "p"} | policy]}
    with pytest.raises(EstateError) as exc:
        import_document(doc, actor="test")
    assert any(p == path and message in m for p, m in exc.value.errors), exc.value.errors
    assert not ApprovalPolicy.objects.exists()
