"""Reconciliation without a worker: contract checks and their errors, runs against real
targets (a PostgreSQL target database, the loopback HTTP target), decisions and who may take
them, the follow-up stage's state changes, the rollback page and the report section."""

from __future__ import annotations

import copy

import httpx
import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError

from ledger.models import Entry
from reconcile import services
from reconcile.models import CheckResult, Finding, Reconciliation
from reconcile.report import report_section
from rollbacks import engine
from rollbacks import services as estate_services
from rollbacks.contracts import validate_reconciliation
from rollbacks.estate import EstateError, export_document, import_document
from rollbacks.models import Contract, Rollback, Stage, Step
from tests.reconcile import estate

pytestmark = pytest.mark.django_db
R = Rollback.State


# Contract checks -----------------------------------------------------------------------------


def test_good_checks_have_no_errors():
    assert validate_reconciliation([estate.DUPLICATES, estate.ORPHANS]) == []
    assert validate_reconciliation(None) == validate_reconciliation([]) == []


def _with(check: dict, **changes) -> dict:
    out = copy.deepcopy(check)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("check", "path", "words"),
    [
        (_with(estate.DUPLICATES, category="dupes"), "[0].category", "is not one of"),
        (_with(estate.DUPLICATES, description=None), "[0].description", "is required"),
        (_with(estate.DUPLICATES, compensation=None), "[0].compensation", "is required"),
        (_with(estate.DUPLICATES, columns=None), "[0].columns", "is required"),
        (_with(estate.DUPLICATES, query="DELETE FROM orders"), "[0].query", "SELECT"),
        (
            _with(estate.DUPLICATES, query="SELECT * FROM orders WHERE id = {run.id}"),
            "[0].query",
            "must not contain templates",
        ),
        (
            _with(
                estate.DUPLICATES,
                compensation=estate.DUPLICATES["compensation"]
                | {"params": {"id": "{finding.ref}"}},
            ),
            "[0].compensation.params",
            "finding has no field 'ref' (external_ref, id)",
        ),
        (
            _with(estate.DUPLICATES, params={"p": "{params.order_id}"}),
            "[0].params",
            "unknown root 'params'",
        ),
        (
            _with(estate.DUPLICATES, compensation={"kind": "sql_restore"}),
            "[0].compensation.kind",
            "must be one of http, sql, flag, manual, simulated",
        ),
        (_with(estate.DUPLICATES, extra=1), "[0]", "unknown fields"),
        (_with(estate.DUPLICATES, kind="ldap"), "[0].kind", "must be one of sql, http"),
        (
            {
                "name": "probe",
                "kind": "http",
                "url": "http://127.0.0.1/x",
                "findings": "items",
                "category": "other",
                "description": "d",
                "compensation": {"kind": "manual", "instructions": "fix {finding.id}"},
            },
            "[0].columns",
            "is required with findings",
        ),
        (
            {
                "name": "probe",
                "kind": "http",
                "url": "http://127.0.0.1/x",
                "category": "other",
                "description": "d",
                "compensation": {"kind": "manual", "instructions": "look at {finding.id}"},
            },
            "[0].compensation.instructions",
            "finding has no field 'id' (body, status)",
        ),
    ],
)
def test_bad_checks_are_named_by_path(check, path, words):
    errors = validate_reconciliation([check])
    assert any(p == path and words in m for p, m in errors), errors


def test_two_checks_with_one_name_are_refused():
    errors = validate_reconciliation([estate.DUPLICATES, estate.DUPLICATES])
    assert errors == [("[1].name", "'duplicate_refs' repeats [0].name")]


def test_publishing_bad_checks_writes_nothing(make_system):
    system = make_system("orders-db", kind="database")
    bad = _with(estate.ORPHANS, columns=["order_id"])
    with pytest.raises(ValidationError) as info:
        estate_services.contract_publish(
            system=system,
            actor="test",
            actions={"a": {"compensation": {"kind": "simulated"}}},
            reconciliation=[estate.DUPLICATES, bad],
        )
    assert "reconciliation[1].compensation.params: template names {finding.id}" in str(info.value)
    assert not Contract.objects.exists() and not Entry.objects.exists()


def _doc(checks) -> dict:
    return {
        "version": 1,
        "teams": [{"slug": "payments", "name": "Payments"}],
        "systems": [
            {
                "slug": "orders-db",
                "name": "Orders",
                "kind": "database",
                "team": "payments",
                "tier": 1,
            }
        ],
        "contracts": [
            {
                "system": "orders-db",
                "actions": {"insert_order": {"compensation": {"kind": "simulated"}}},
                "reconciliation": checks,
            }
        ],
    }


def test_the_estate_document_carries_checks_and_refuses_bad_ones_whole(teams):
    bad = _with(estate.DUPLICATES, compensation={"kind": "manual", "instructions": "{finding.x}"})
    entries = Entry.objects.count()
    with pytest.raises(EstateError) as info:
        import_document(_doc([estate.ORPHANS, bad]), actor="test")
    assert (
        "contracts[0].reconciliation[1].compensation.instructions",
        "template names {finding.x}: finding has no field 'x' (external_ref, id)",
    ) in info.value.errors
    assert not Contract.objects.exists() and Entry.objects.count() == entries

    result = import_document(_doc([estate.ORPHANS]), actor="test")
    assert "+ contract orders-db v1" in result.changes
    assert Contract.objects.get().reconciliation == [estate.ORPHANS]
    exported = export_document()
    assert exported["contracts"][0]["reconciliation"] == [estate.ORPHANS]
    assert not import_document(exported, actor="test").changes  # round trip: nothing new
    changed = import_document(_doc([estate.ORPHANS, estate.DUPLICATES]), actor="test")
    assert "+ contract orders-db v2" in changed.changes  # a new check is a new version


# Running checks against real targets -----------------------------------------------------------


@pytest.fixture
def target(monkeypatch):
    names = []

    def make(*, dirty: bool = True) -> str:
        names.append(estate.create_target(monkeypatch, dirty=dirty))
        return f"postgres://postgres@127.0.0.1:5432/{names[-1]}"

    yield make
    for name in names:
        estate.drop_target(name)


def _ended_rollback(alice, external_id: str = "run-1") -> Rollback:
    """A planned rollback, aborted before it ran: it ended, so reconciliation is queued."""
    rollback = engine.rollback_plan(
        run=estate.failed_run(external_id), actor=alice, reason="bad migration"
    )
    return engine.rollback_abort(rollback=rollback, actor=alice, reason="the orders team fixes it")


def _reconcile(rollback) -> Reconciliation:
    rec = Reconciliation.objects.filter(rollback=rollback, state="queued").get()
    services.run_reconciliation(reconciliation_id=rec.pk)
    return Reconciliation.objects.get(pk=rec.pk)


@pytest.mark.postgres
def test_a_clean_target_has_no_findings_and_a_broken_check_is_not_clean(target, make_system, alice):
    target(dirty=False)
    broken = _with(estate.ORPHANS, name="broken", query="SELECT id FROM no_such_table")
    estate.build(make_system, checks=[estate.DUPLICATES, estate.ORPHANS, broken])
    rollback = _ended_rollback(alice)
    rec = _reconcile(rollback)
    assert rec.state == "done" and not rec.findings.exists()
    outcomes = dict(rec.results.values_list("check_name", "outcome"))
    assert outcomes == {
        "duplicate_refs": CheckResult.Outcome.CLEAN,
        "orphaned_items": CheckResult.Outcome.CLEAN,
        "broken": CheckResult.Outcome.ERROR,
    }
    assert "no_such_table" in rec.results.get(check_name="broken").detail
    assert rec.summary == "0 findings from 3 checks; orders-db/broken could not run"
    finished = Entry.objects.get(rollback_id=rollback.pk, action="reconcile.finished")
    assert finished.outcome == "failed"


@pytest.mark.postgres
def test_a_query_without_the_declared_columns_is_an_error(target, make_system, alice):
    target()
    estate.build(
        make_system, checks=[_with(estate.ORPHANS, query="SELECT i.id FROM order_items i")]
    )
    rec = _reconcile(_ended_rollback(alice))
    result = rec.results.get()
    assert result.outcome == CheckResult.Outcome.ERROR and "order_id" in result.detail
    assert not rec.findings.exists()


@pytest.mark.postgres
def test_a_check_cannot_write(target, make_system, alice):
    url = target()
    sneaky = _with(
        estate.ORPHANS,
        query="WITH gone AS (DELETE FROM order_items RETURNING id, order_id) SELECT * FROM gone",
    )
    estate.build(make_system, checks=[sneaky])
    rec = _reconcile(_ended_rollback(alice))
    assert rec.results.get().outcome == CheckResult.Outcome.ERROR
    assert "read-only" in rec.results.get().detail
    assert estate.rows(url, "order_items") == [100, 101]


@pytest.mark.postgres
def test_a_system_without_checks_says_so(target, make_system, alice):
    target()
    estate.build(make_system, checks=[])
    rec = _reconcile(_ended_rollback(alice))
    result = rec.results.get()
    assert (result.outcome, result.detail) == ("no_checks", "contract v1 has none")


@pytest.mark.postgres
def test_findings_decisions_and_who_may_take_them(
    target, make_system, alice, bob, carol, mallory, dave, django_user_model
):
    target()
    estate.build(make_system)
    rollback = _ended_rollback(alice)
    rec = _reconcile(rollback)
    # Aborted before it ran: orders 1 and 2 are still there, so item 100 is no orphan.
    (dup,) = rec.findings.all()
    assert (dup.check_name, dup.details) == ("duplicate_refs", {"id": 11, "external_ref": "r10"})
    pat = django_user_model.objects.create_user("pat")  # an operator of another team
    pat.groups.set(
        [Group.objects.get(name="team:platform"), Group.objects.get_or_create(name="operator")[0]]
    )

    for outsider in (bob, carol, mallory, pat):
        with pytest.raises(PermissionDenied):
            services.finding_dismiss(finding=dup, actor=outsider, reason="not mine")
        with pytest.raises(PermissionDenied):
            services.followup_add(rollback=rollback, finding_ids=[dup.pk], actor=outsider)
        with pytest.raises(PermissionDenied):
            services.request_reconciliation(rollback=rollback, actor=outsider)
    refused = Entry.objects.filter(rollback_id=rollback.pk, outcome="refused")
    assert refused.count() == 12 and refused.filter(actor="user:carol").count() == 3
    with pytest.raises(ValidationError, match="say why"):
        services.finding_dismiss(finding=dup, actor=alice, reason="  ")
    dup.refresh_from_db()
    assert dup.status == Finding.Status.OPEN

    services.finding_dismiss(finding=dup, actor=alice, reason="order 11 is a legitimate reorder")
    dup.refresh_from_db()
    assert (dup.status, dup.decided_by, dup.dismiss_reason) == (
        "dismissed",
        alice,
        "order 11 is a legitimate reorder",
    )
    assert Entry.objects.filter(
        rollback_id=rollback.pk, action="reconcile.finding_dismissed", actor="user:alice"
    ).exists()
    with pytest.raises(ValidationError, match="is dismissed: cannot dismiss"):
        services.finding_dismiss(finding=dup, actor=dave, reason="again")
    with pytest.raises(ValidationError, match="no longer open"):
        services.followup_add(rollback=rollback, finding_ids=[dup.pk], actor=alice)

    # A re-run finds the same row again: it stays dismissed, with who and why.
    services.request_reconciliation(rollback=rollback, actor=alice)
    with pytest.raises(ValidationError, match="already under way"):
        services.request_reconciliation(rollback=rollback, actor=alice)
    again = _reconcile(rollback).findings.get()
    assert again.pk != dup.pk and again.status == "dismissed" and again.decided_by == alice
    assert f"finding #{dup.pk}" in again.dismiss_reason


@pytest.mark.postgres
def test_a_follow_up_after_an_abort_closes_the_old_stage_and_runs_only_the_new_one(
    target, make_system, alice
):
    url = target()
    estate.build(make_system)
    rollback = engine.rollback_plan(run=estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)  # stage 1 running, steps dispatched
    engine.rollback_abort(rollback=rollback, actor=alice, reason="stop")
    (dup,) = _reconcile(rollback).findings.all()
    with pytest.raises(ValidationError, match="no such finding"):
        services.followup_add(rollback=rollback, finding_ids=[dup.pk + 1000], actor=alice)
    with pytest.raises(ValidationError, match="select at least one"):
        services.followup_add(rollback=rollback, finding_ids=[], actor=alice)

    stage = services.followup_add(rollback=rollback, finding_ids=[dup.pk], actor=alice)
    rollback.refresh_from_db()
    assert rollback.state == R.APPROVED  # no policy asks for an approval
    old = Stage.objects.get(rollback=rollback, index=1)
    assert old.state == Stage.State.CANCELLED and stage.index == 2
    with pytest.raises(ValidationError, match="once it has ended"):  # not twice at once
        services.followup_add(rollback=rollback, finding_ids=[dup.pk], actor=alice)

    engine.rollback_start(rollback=rollback, actor=alice)
    (step,) = Step.objects.filter(stage=stage)
    assert engine.step_run(step_id=step.pk) == "succeeded"
    for cancelled in Step.objects.filter(stage=old):  # never claimable again
        assert engine.step_run(step_id=cancelled.pk) == "not claimable"
    rollback.refresh_from_db()
    # The original steps stayed undone, so the rollback is partial, not succeeded.
    assert rollback.state == R.PARTIALLY_ROLLED_BACK
    assert estate.rows(url, "orders") == [1, 2, 10]
    reopened = Entry.objects.get(rollback_id=rollback.pk, action="rollback.reopened")
    assert (
        reopened.payload["from"] == list(Rollback.TERMINAL) and reopened.payload["to"] == "approved"
    )
    # Ended again: the next reconciliation is queued.
    assert Reconciliation.objects.filter(rollback=rollback, state="queued").count() == 1


# HTTP checks against the loopback target -----------------------------------------------------


def _http_checks(base: str) -> list[dict]:
    return [
        estate.captures_check(base),
        {
            "name": "gateway_health",
            "kind": "http",
            "url": base + "/gateway/health",
            "expect_status": [200],
            "expect_body": {"status": "ok"},
            "category": "other",
            "description": "The gateway must be healthy after the unwind",
            "compensation": {"kind": "manual", "instructions": "Gateway said {finding.status}"},
        },
        {
            "name": "bad_shape",
            "kind": "http",
            "url": base + "/_effects",
            "findings": "nope",
            "columns": ["path"],
            "category": "other",
            "description": "d",
            "compensation": {"kind": "manual", "instructions": "x"},
        },
    ]


def test_http_checks_against_the_loopback_target(target_server, make_system, alice):
    base, state = target_server
    rollback = estate.gateway_rollback(make_system, alice, _http_checks(base))

    rec = _reconcile(rollback)  # the target has seen nothing yet
    outcomes = dict(rec.results.values_list("check_name", "outcome"))
    assert outcomes == {
        "captures_in_flight": "clean",
        "gateway_health": "clean",
        "bad_shape": "error",
    }
    assert "no 'nope'" in rec.results.get(check_name="bad_shape").detail

    httpx.post(base + "/payments/capture", headers={"Idempotency-Key": '"pay-7"'})
    state.failures["/gateway/health"] = 503
    services.request_reconciliation(rollback=rollback, actor=alice)
    rec = _reconcile(rollback)
    capture = rec.findings.get(check_name="captures_in_flight")
    assert capture.category == "in_flight_transaction"
    assert capture.details == {
        "path": "/payments/capture",
        "key": "pay-7",
        "body": None,
        "at": capture.details["at"],
    }
    assert capture.compensation["url"] == base + "/payments/void/pay-7"
    assert capture.compensation["body"] == {"rollback": rollback.pk}
    health = rec.findings.get(check_name="gateway_health")
    assert health.details == {"status": 503, "body": {"status": "down"}}
    assert health.compensation == {"kind": "manual", "instructions": "Gateway said 503"}

    # The suggested HTTP compensation runs as a step of the follow-up stage.
    stage = services.followup_add(rollback=rollback, finding_ids=[capture.pk], actor=alice)
    engine.rollback_start(rollback=rollback, actor=alice)
    (step,) = stage.steps.all()
    assert engine.step_run(step_id=step.pk) == "succeeded"
    voids = [e for e in state.effects if e["path"] == "/payments/void/pay-7"]
    assert len(voids) == 1 and voids[0]["key"] == f"unwind-reconcile-{capture.pk}"


# The page and the report ----------------------------------------------------------------------


@pytest.mark.postgres
def test_the_rollback_page_shows_findings_and_takes_decisions(
    target, make_system, alice, carol, client
):
    url = target()
    estate.build(make_system)
    rollback = engine.rollback_plan(run=estate.failed_run(), actor=alice, reason="r")
    engine.rollback_start(rollback=rollback, actor=alice)
    for step in Step.objects.filter(rollback=rollback):
        engine.step_run(step_id=step.pk)
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED
    page = f"/rollbacks/{rollback.pk}/"
    panel = f"/reconcile/rollbacks/{rollback.pk}/"
    htmx = {"HTTP_HX_REQUEST": "true"}

    client.force_login(alice)
    html = client.get(page).content.decode()  # the rollback page loads the panel by itself
    assert f'hx-get="{panel}" hx-trigger="load"' in html and f'href="{panel}"' in html
    assert "The checks are running" in client.get(panel, **htmx).content.decode()
    rec = _reconcile(rollback)
    dup = rec.findings.get(check_name="duplicate_refs")
    orphan = rec.findings.get(check_name="orphaned_items")
    fragment = client.get(panel, **htmx).content.decode()
    assert fragment.lstrip().startswith('<section id="reconciliation"') and "<html" not in fragment
    assert "2 findings from 2 checks" in fragment and "hx-trigger" not in fragment  # no polling
    assert (
        f'id="finding-{dup.pk}-select"' in fragment
        and f'id="finding-{orphan.pk}-select"' in fragment
    )
    assert "reconcile-followup-button" in fragment and 'name="back" value="rollback"' in fragment
    whole = client.get(panel).content.decode()  # without JavaScript: a page of its own
    assert "<html" in whole and "2 findings from 2 checks" in whole
    assert 'name="back" value="page"' in whole

    client.force_login(carol)  # the auditor reads everything and gets no controls
    html = client.get(panel, **htmx).content.decode()
    assert f"finding-{dup.pk}" in html and "reconcile-followup-button" not in html
    assert f"finding-{dup.pk}-dismiss" not in html and "reconcile-run-button" not in html

    client.force_login(alice)
    dismiss = f"/reconcile/rollbacks/{rollback.pk}/findings/{dup.pk}/dismiss"
    answer = client.post(dismiss, {"back": "rollback"})
    assert answer.status_code == 302 and answer["Location"] == page + "#reconciliation"
    dup.refresh_from_db()
    assert dup.status == "open"  # no reason: nothing changed
    answer = client.post(dismiss, {"reason": "a legitimate reorder", "back": "page"})
    assert answer["Location"] == panel
    client.post(f"/reconcile/rollbacks/{rollback.pk}/follow-up", {"finding": [orphan.pk]})
    orphan.refresh_from_db()
    rollback.refresh_from_db()
    assert (Finding.objects.get(pk=dup.pk).status, orphan.status) == ("dismissed", "added")
    assert rollback.state == R.APPROVED and orphan.followup_step.stage.index == 2
    html = client.get(panel).content.decode()
    assert "a legitimate reorder" in html and f"#step-{orphan.followup_step_id}" in html
    assert f"Stage 2 added; rollback #{rollback.pk} is approved." in html  # the message
    assert estate.rows(url, "order_items") == [100, 101]  # nothing ran yet


@pytest.mark.postgres
def test_report_section(target, make_system, alice):
    target()
    estate.build(make_system)
    rollback = _ended_rollback(alice)
    assert report_section(rollback)["state"] == "queued"
    rec = _reconcile(rollback)
    (dup,) = rec.findings.all()
    services.finding_dismiss(finding=dup, actor=alice, reason="reorder | fine")
    section = report_section(rollback)
    assert section["title"] == "Reconciliation" and section["state"] == "done"
    assert section["runs"] == 1 and section["summary"] == "1 finding from 2 checks"
    assert [(c["check"], c["outcome"]) for c in section["checks"]] == [
        ("duplicate_refs", "findings"),
        ("orphaned_items", "clean"),
    ]
    (row,) = section["rows"]
    assert row["status"] == "dismissed" and row["decided_by"] == "alice"
    assert row["details"] == {"id": 11, "external_ref": "r10"}
    assert section["markdown"].startswith("1 run(s); the last finished")
    assert "dismissed by alice: reorder \\| fine" in section["markdown"]


@pytest.mark.postgres
def test_a_run_whose_worker_died_is_handed_on_and_the_late_answer_refused(
    target, make_system, alice
):
    from datetime import timedelta

    from django.utils import timezone

    from rollbacks.models import Outbox

    target()
    estate.build(make_system)
    rollback = _ended_rollback(alice)
    rec = Reconciliation.objects.get(rollback=rollback)
    sent = Outbox.objects.filter(task=services.RUN_TASK, kwargs__reconciliation_id=rec.pk)
    assert sent.count() == 1  # written with the transaction that ended the rollback

    # Nobody claimed it for a while (the message was lost): the sweeper sends it again.
    Reconciliation.objects.filter(pk=rec.pk).update(
        requested_at=timezone.now() - timedelta(minutes=1)
    )
    assert services.sweep() == {"expired": 0, "resent": 1} and sent.count() == 2
    assert services.sweep() == {"expired": 0, "resent": 0}

    # A worker claimed it and died: once the lease expires, it is queued again.
    Reconciliation.objects.filter(pk=rec.pk).update(
        state="running", attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.sweep()["expired"] == 1 and sent.count() == 3
    rec.refresh_from_db()
    assert rec.state == "queued" and rec.attempts == 1
    assert Entry.objects.filter(rollback_id=rollback.pk, action="reconcile.lease_expired").exists()

    assert "1 finding" in services.run_reconciliation(reconciliation_id=rec.pk)
    rec.refresh_from_db()
    assert (rec.state, rec.attempts) == ("done", 2)
    # The dead worker's late answer (attempt 1) changes nothing.
    assert services._record(rec, 1, [], {}) == "refused"
    assert services.run_reconciliation(reconciliation_id=rec.pk) == "not claimable"
    assert rec.findings.count() == 1
