"""Publishing runbook versions and instantiating them: the plan comes from the engine's one
planning path, refusals name the field and write nothing, and every change is ledgered."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from ledger.models import Entry
from rollbacks import engine
from rollbacks import services as estate
from rollbacks.models import ForwardAction, ProcessRun, Rollback
from runbooks import services
from runbooks.models import RunbookInstance, RunbookVersion
from tests.runbooks.conftest import GOOD_VALUES, PARAMETERS, STEPS

pytestmark = pytest.mark.django_db


def _snapshot():
    return (
        ProcessRun.objects.count(),
        ForwardAction.objects.count(),
        Rollback.objects.count(),
        RunbookInstance.objects.count(),
        Entry.objects.exclude(outcome="refused").count(),
    )


def test_publishing_numbers_versions_and_keeps_the_old_ones(rb):
    v2 = services.runbook_version_publish(
        runbook=rb.own, parameters=PARAMETERS, steps=STEPS[:1], actor="test", note="flag only"
    )
    assert (rb.own_v1.version, v2.version) == (1, 2)
    rb.own_v1.refresh_from_db()
    assert rb.own_v1.steps == STEPS  # untouched
    assert rb.own.latest_version() == v2
    entry = Entry.objects.filter(action="runbook.version.published").last()
    assert entry.payload["runbook"] == "checkout-off" and entry.payload["version"] == 2
    assert entry.payload["steps"] == STEPS[:1]


def test_publishing_a_bad_version_names_the_field_and_writes_nothing(rb):
    before = (RunbookVersion.objects.count(), Entry.objects.count())
    bad = [{"system": "flags", "action_type": "enable_flag", "params": {"f": "{params.nope}"}}]
    with pytest.raises(ValidationError) as exc:
        services.runbook_version_publish(runbook=rb.own, parameters=[], steps=bad, actor="test")
    assert "steps[0].params.f: {params.nope}: no such field" in exc.value.messages[0]
    assert (RunbookVersion.objects.count(), Entry.objects.count()) == before


def test_instantiating_plans_the_steps_in_stages_through_the_engine(rb, alice):
    rollback = services.runbook_instantiate(
        version=rb.own_v1, actor=alice, values=GOOD_VALUES, reason="flag flipped too early"
    )
    run = rollback.run
    assert run.process == "runbook:checkout-off" and run.created_by == alice
    assert run.status == ProcessRun.Status.FAILED
    assert [
        (a.sequence, a.system.slug, a.action_type, a.params)
        for a in run.actions.order_by("sequence")
    ] == [
        (1, "flags", "enable_flag", {"flag": "new-checkout"}),
        (2, "billing-api", "create_invoice", {"invoice_id": "inv-1", "mode": "void"}),
        (3, "billing-db", "insert_ledger_row", {"id": 88}),
    ]
    assert rollback.trigger == "runbook" and rollback.reason == "flag flipped too early"
    assert rollback.state == Rollback.State.APPROVED  # no policy in this estate
    stages = [
        [(s.system.slug, s.kind) for s in stage.steps.order_by("id")]
        for stage in rollback.stages.order_by("index")
    ]
    assert stages == [
        [("flags", "simulated")],
        [("billing-api", "http")],
        [("billing-db", "simulated")],
    ]
    http = rollback.steps.get(system__slug="billing-api")
    assert http.spec["url"] == "http://127.0.0.1:9/invoices/inv-1/void"
    assert http.spec["body"] == {"mode": "void"}
    instance = RunbookInstance.objects.get()
    assert (instance.version, instance.run, instance.rollback) == (rb.own_v1, run, rollback)
    assert instance.values == {
        "flag": "new-checkout",
        "invoice_id": "inv-1",
        "row": 88,
        "mode": "void",
    }
    assert services.instance_of(rollback) == instance
    entry = Entry.objects.get(action="runbook.instantiated")
    assert entry.rollback_id == rollback.pk and entry.payload["version"] == 1
    assert entry.payload["values"]["row"] == 88
    # The run and each action were reported like any process's, in the same transaction.
    assert Entry.objects.filter(action="run.action_reported").count() == 3
    assert Entry.objects.filter(action="rollback.planned", rollback_id=rollback.pk).exists()


def test_each_instantiation_is_a_new_run(rb, alice):
    first = services.runbook_instantiate(
        version=rb.own_v1, actor=alice, values=GOOD_VALUES, reason="one"
    )
    second = services.runbook_instantiate(
        version=rb.own_v1, actor=alice, values=GOOD_VALUES, reason="two", is_drill=True
    )
    assert first.run != second.run and first.run.external_id != second.run.external_id
    assert second.is_drill and not first.is_drill


def test_bad_values_are_refused_per_field_and_nothing_is_written(rb, alice):
    before = _snapshot()
    with pytest.raises(engine.EngineError) as exc:
        services.runbook_instantiate(
            version=rb.own_v1, actor=alice, values={"row": "x", "bogus": 1}, reason=" "
        )
    errors = exc.value.message_dict
    assert errors["params.row"] == ["must be a whole number, not 'x'"]
    assert errors["params.invoice_id"] == ["is required"]
    assert errors["params.bogus"] == ["unknown parameter"]
    assert errors["reason"] == ["say why this runbook is being used"]
    assert _snapshot() == before


def test_a_contract_that_lost_the_action_is_refused_before_anything_is_written(rb, alice):
    estate.contract_publish(
        system=rb.systems["billing-db"],
        actions={"other_action": {"compensation": {"kind": "simulated"}}},
        actor="test",
    )
    before = _snapshot()
    with pytest.raises(engine.EngineError) as exc:
        services.runbook_instantiate(version=rb.own_v1, actor=alice, values=GOOD_VALUES, reason="r")
    assert exc.value.message_dict == {
        "steps[2].action_type": [
            "the contract of billing-db has no action 'insert_ledger_row' (it has: other_action)"
        ]
    }
    assert _snapshot() == before


@pytest.mark.parametrize("who", ["bob", "carol", "mallory"])
def test_only_an_operator_of_the_systems_teams_may_instantiate(rb, request, who):
    user = request.getfixturevalue(who)
    before = _snapshot()
    with pytest.raises(PermissionDenied):
        services.runbook_instantiate(version=rb.own_v1, actor=user, values=GOOD_VALUES, reason="r")
    assert _snapshot() == before
    refused = Entry.objects.get(action="runbook.instantiate", outcome="refused")
    assert refused.actor == f"user:{who}"


def test_an_operator_of_another_team_may_not_use_a_runbook(rb, alice):
    with pytest.raises(PermissionDenied):
        services.runbook_instantiate(version=rb.foreign_v1, actor=alice, values={}, reason="r")
    assert not RunbookInstance.objects.exists()


def test_listing_shows_the_runbooks_whose_systems_the_user_sees(rb, alice, carol, mallory, dave):
    assert [v.runbook.slug for v in services.latest_versions_for(alice)] == ["checkout-off"]
    assert [v.runbook.slug for v in services.latest_versions_for(carol)] == [
        "checkout-off",
        "reindex",
    ]
    assert services.latest_versions_for(mallory) == []
    assert services.may_use(dave, rb.foreign_v1) and not services.may_use(carol, rb.own_v1)


def test_missing_incident_types_are_recreated_and_ledgered():
    from runbooks.models import IncidentType

    IncidentType.objects.filter(slug="third-party-failure").delete()
    created = services.incident_types_ensure(actor="test")
    assert [i.slug for i in created] == ["third-party-failure"]
    assert IncidentType.objects.get(slug="third-party-failure").cause == "third_party"
    assert Entry.objects.filter(action="incident_type.created").count() == 1
    assert services.incident_types_ensure(actor="test") == []
