"""Approval policies and trigger rules in the estate document: round trip, paths, all or nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from governance.models import ApprovalPolicy, TriggerRule
from ledger.models import Entry
from rollbacks.estate import EstateError, export_document, import_document
from rollbacks.models import System

pytestmark = pytest.mark.django_db
DEMO = yaml.safe_load((Path(__file__).resolve().parents[2] / "demo" / "estate.yaml").read_text())


def _snapshot():
    return (
        list(ApprovalPolicy.objects.order_by("name").values()),
        list(TriggerRule.objects.order_by("name").values()),
        System.objects.count(),
        Entry.objects.count(),
    )


def test_policies_and_triggers_round_trip_with_an_empty_diff():
    import_document(copy.deepcopy(DEMO), actor="test")
    critical = ApprovalPolicy.objects.get(name="critical")
    assert (
        critical.approvals_required == 2
        and critical.tiers == [1]
        and critical.expires_after_s == 1800
    )
    assert list(critical.eligible_groups.values_list("name", flat=True)) == ["approver"]
    assert TriggerRule.objects.get(name="checkout-errors").match == {
        "alertname": "CheckoutErrorRate"
    }
    exported = export_document()
    assert {p["name"] for p in exported["policies"]} == {"critical", "low-tier-auto"}
    assert import_document(exported, actor="test").changes == []
    assert import_document(copy.deepcopy(DEMO), actor="test").changes == []


def test_changing_a_policy_in_the_document_updates_it():
    import_document(copy.deepcopy(DEMO), actor="test")
    doc = copy.deepcopy(DEMO)
    doc["policies"][0]["approvals"] = 3
    doc["policies"][0]["scope"]["systems"] = ["orders-db"]
    result = import_document(doc, actor="test")
    assert len(result.changes) == 1 and result.changes[0].startswith(
        "~ policy critical: approvals_required 2 → 3"
    )
    assert list(
        ApprovalPolicy.objects.get(name="critical").systems.values_list("slug", flat=True)
    ) == ["orders-db"]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (
            lambda d: d["policies"][0]["scope"].update(tiers=[7]),
            "policies[0].scope.tiers",
            "1 (most critical) to 4",
        ),
        (
            lambda d: d["policies"][0]["scope"].update(systems=["nope"]),
            "policies[0].scope.systems[0]",
            "unknown system 'nope'",
        ),
        (lambda d: d["policies"][1].update(approvals=-1), "policies[1].approvals", "0 to 20"),
        (
            lambda d: d["policies"][0].update(attestations=[{"key": "pii"}]),
            "policies[0].attestations",
            "label is required",
        ),
        (lambda d: d["policies"][0].update(colour="red"), "policies[0].colour", "unknown field"),
        (
            lambda d: d["policies"].append(dict(d["policies"][0])),
            "policies[2].name",
            "listed twice",
        ),
        (
            lambda d: d["triggers"][0].update(match={"alertname": "=~("}),
            "triggers[0].match",
            "alertname",
        ),
        (
            lambda d: d["triggers"][0].update(service_account="ghost"),
            "triggers[0].service_account",
            "unknown account 'ghost'",
        ),
        (
            lambda d: d["triggers"][0].update(run_label="process run"),
            "triggers[0].run_label",
            "label name",
        ),
    ],
)
def test_bad_policy_or_trigger_is_refused_with_its_path_and_changes_nothing(mutate, path, message):
    import_document(copy.deepcopy(DEMO), actor="test")
    before = _snapshot()
    doc = copy.deepcopy(DEMO)
    mutate(doc)
    doc["systems"][0]["name"] = "Renamed too"  # a valid change in the same document is not applied
    with pytest.raises(EstateError) as exc:
        import_document(doc, actor="test")
    assert any(p == path and message in m for p, m in exc.value.errors), exc.value.errors
    assert _snapshot() == before
