"""A small estate with a runbook of the payments team and one of the platform team.

flags (tier 3) → billing-api (tier 2) → billing-db (tier 1), all payments; search
(platform). ``checkout-off`` undoes a flag, an invoice and a ledger row; ``reindex``
touches only search, which alice and bob cannot see.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rollbacks import services as estate
from rollbacks.models import DependencyEdge
from runbooks import services
from runbooks.models import IncidentType

BEFORE = DependencyEdge.Kind.BEFORE
SIMULATED = {"compensation": {"kind": "simulated", "latency_ms": 1}, "attempts": 1}
PARAMETERS = [
    {"name": "flag", "type": "string", "default": "new-checkout", "label": "Feature flag"},
    {"name": "invoice_id", "type": "string", "help": "e.g. inv-1"},
    {"name": "row", "type": "int"},
    {"name": "mode", "type": "choice", "choices": ["void", "refund"], "default": "void"},
]
STEPS = [
    {"system": "flags", "action_type": "enable_flag", "params": {"flag": "{params.flag}"}},
    {
        "system": "billing-api",
        "action_type": "create_invoice",
        "params": {"invoice_id": "{params.invoice_id}", "mode": "{params.mode}"},
    },
    {"system": "billing-db", "action_type": "insert_ledger_row", "params": {"id": "{params.row}"}},
]


@pytest.fixture
def rb(make_system):
    systems = {
        "flags": make_system("flags", kind="feature_flag", tier=3),
        "billing-api": make_system("billing-api", tier=2),
        "billing-db": make_system("billing-db", kind="database", tier=1),
        "search": make_system("search", team="platform", tier=3),
    }
    for slug, action in (
        ("flags", "enable_flag"),
        ("billing-db", "insert_ledger_row"),
        ("search", "reindex"),
    ):
        estate.contract_publish(system=systems[slug], actions={action: SIMULATED}, actor="test")
    estate.contract_publish(
        system=systems["billing-api"],
        actor="test",
        actions={
            "create_invoice": {
                "compensation": {
                    "kind": "http",
                    "method": "POST",
                    "url": "http://127.0.0.1:9/invoices/{params.invoice_id}/void",
                    "body": {"mode": "{params.mode}"},
                }
            }
        },
    )
    estate.dependency_map_publish(
        edges=[(BEFORE, "flags", "billing-api"), (BEFORE, "billing-api", "billing-db")],
        actor="test",
    )
    services.incident_types_ensure(actor="test")  # a transactional test may have flushed them
    incident = IncidentType.objects.get(slug="flag-misfire")
    own = services.runbook_create(
        slug="checkout-off", name="Checkout off", incident_type=incident, actor="test"
    )
    own_v1 = services.runbook_version_publish(
        runbook=own, parameters=PARAMETERS, steps=STEPS, actor="test"
    )
    foreign = services.runbook_create(
        slug="reindex", name="Reindex search", incident_type=incident, actor="test"
    )
    foreign_v1 = services.runbook_version_publish(
        runbook=foreign,
        parameters=[],
        steps=[{"system": "search", "action_type": "reindex", "params": {}}],
        actor="test",
    )
    return SimpleNamespace(
        systems=systems, own=own, own_v1=own_v1, foreign=foreign, foreign_v1=foreign_v1
    )


GOOD_VALUES = {"invoice_id": "inv-1", "row": 88}
