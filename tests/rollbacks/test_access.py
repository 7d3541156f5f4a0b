"""The one operator check (``rollbacks.access.require_operator``) that views and services of
every app call, and the rule that keeps it the only one: no app imports another app's
private helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied

from ledger.models import Entry
from rollbacks import access, engine, runs, services

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
APPS = (
    "rollbacks",
    "governance",
    "ledger",
    "dashboard",
    "timeline",
    "runbooks",
    "reconcile",
    "drills",
    "reports",
)


@pytest.fixture
def planned(make_system, alice):
    services.contract_publish(
        system=make_system("orders-api"),
        actor="test",
        actions={"undo": {"compensation": {"kind": "simulated", "latency_ms": 1}}},
    )
    run, _ = runs.run_register(process="checkout", external_id="r-1", actor="test")
    runs.action_report(
        run=run, system_slug="orders-api", action_type="undo", idempotency_key="k", actor="test"
    )
    return engine.rollback_plan(run=run, actor=alice, reason="bad deploy")


def test_operator_of_the_rollbacks_team_passes_and_nothing_is_ledgered(planned, alice, dave):
    before = Entry.objects.count()
    access.require_operator(alice, planned, "drill.fault.add")
    access.require_operator(dave, planned, "drill.fault.add")
    access.require_operator("worker", planned, "rollback.start")  # the engine itself
    assert Entry.objects.count() == before


@pytest.mark.parametrize("who", ["bob", "carol", "mallory"])
def test_anyone_else_is_refused_and_the_refusal_is_ledgered(planned, who, request):
    user = request.getfixturevalue(who)
    with pytest.raises(PermissionDenied, match="may re-run reconciliation"):
        access.require_operator(
            user, planned, "reconcile.request", why="only an operator may re-run reconciliation"
        )
    entry = Entry.objects.get(action="reconcile.request", outcome="refused")
    assert entry.rollback_id == planned.pk
    assert entry.actor == f"user:{who}"
    assert entry.reason == "only an operator may re-run reconciliation"


def test_the_default_reason_names_the_rollbacks_teams(planned, bob):
    with pytest.raises(PermissionDenied, match="only an operator of the rollback's teams"):
        access.require_operator(bob, planned, "rollback.start")


def _private_imports_across_apps() -> list[str]:
    found = []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom) or not node.module:
                    continue
                other = node.module.split(".")[0]
                if other in APPS and other != app:
                    found += [
                        f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_")
                    ]
    return found


def test_no_app_imports_another_apps_private_helpers():
    assert _private_imports_across_apps() == []
