"""The demo's failed process run, and the target database its SQL compensation touches."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dj_database_url
from django.conf import settings

from rollbacks import runs
from rollbacks.targets import target_urls

ORDERS = (1001, 1002)
ESTATE = Path(__file__).resolve().parent / "estate.yaml"
# The base demo/estate.yaml names its loopback targets at (demo/targets.py, `make run`'s port).
ESTATE_TARGETS_URL = "http://127.0.0.1:9100"


def estate_text(targets_url: str | None = None) -> str:
    """demo/estate.yaml with its targets at ``targets_url`` (default: DEMO_TARGETS_URL)."""
    text = ESTATE.read_text()
    targets_url = (targets_url or settings.DEMO_TARGETS_URL).rstrip("/")
    return text.replace(ESTATE_TARGETS_URL + "/", targets_url + "/")


def prepare_orders_db() -> str:
    """Create the demo's orders table with the rows the demo run inserted (idempotent)."""
    url = target_urls().get("orders")
    if not url or not url.startswith("sqlite"):
        return "orders target database not configured (TARGET_DATABASE_ORDERS): skipped"
    conn = sqlite3.connect(dj_database_url.parse(url)["NAME"])
    with conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL)"
        )
        conn.executemany(
            "INSERT OR IGNORE INTO orders (id, status) VALUES (?, 'new')", [(i,) for i in ORDERS]
        )
    conn.close()
    return f"orders target database ready ({url})"


def failed_run(*, actor) -> str:
    """The checkout migration that failed half-way: ready to be rolled back."""
    run, created = runs.run_register(
        process="checkout-migration",
        external_id="demo-1",
        actor=actor,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    )
    report = [
        ("flags", "enable_flag", {"flag": "new-checkout"}),
        *[("orders-db", "insert_order_row", {"order_id": i}) for i in ORDERS],
        *[("orders-api", "create_order", {"order_id": i}) for i in ORDERS],
        ("events-queue", "publish_event", {"event_id": "evt-7781"}),
        ("billing-api", "create_invoice", {"invoice_id": "inv-5521"}),
        ("billing-db", "insert_ledger_row", {"row_id": 88}),
        ("payment-gateway", "capture_payment", {"payment_id": "pay_3fa9"}),
    ]
    for i, (system, action_type, params) in enumerate(report, start=1):
        runs.action_report(
            run=run,
            system_slug=system,
            action_type=action_type,
            params=params,
            idempotency_key=f"demo-1-{i}",
            actor=actor,
        )
    runs.run_fail(
        run=run, reason="payment capture succeeded but the ledger write timed out", actor=actor
    )
    return (
        f"demo run {run} ({'created' if created else 'already there'}, {run.get_status_display()})"
    )


# Runbooks: rollbacks an operator plans in a few clicks when no process reported a log.
RUNBOOKS = [
    {
        "slug": "checkout-flag-off",
        "name": "Disable the checkout flag and void invoices",
        "incident_type": "flag-misfire",
        "description": "The new checkout went live too early and billed customers: switch the "
        "flag off, void the invoice it created and remove its ledger row.",
        "parameters": [
            {
                "name": "flag",
                "type": "string",
                "default": "new-checkout",
                "label": "Feature flag",
                "help": "The flag that was switched on.",
            },
            {
                "name": "invoice_id",
                "type": "string",
                "label": "Invoice",
                "help": "The invoice to void, e.g. inv-5521.",
            },
            {
                "name": "ledger_row",
                "type": "int",
                "label": "Billing ledger row",
                "help": "The id of the billing ledger row the invoice wrote.",
            },
        ],
        "steps": [
            {"system": "flags", "action_type": "enable_flag", "params": {"flag": "{params.flag}"}},
            {
                "system": "billing-api",
                "action_type": "create_invoice",
                "params": {"invoice_id": "{params.invoice_id}"},
            },
            {
                "system": "billing-db",
                "action_type": "insert_ledger_row",
                "params": {"row_id": "{params.ledger_row}"},
            },
        ],
    },
    {
        "slug": "cancel-order",
        "name": "Cancel a stuck order",
        "incident_type": "bad-deploy",
        "description": "A bad orders-api deploy created an order it should not have: cancel it, "
        "retract its event and delete its row.",
        "parameters": [
            {
                "name": "order_id",
                "type": "int",
                "minimum": 1,
                "label": "Order",
                "help": "e.g. 1001.",
            },
            {
                "name": "event_id",
                "type": "string",
                "label": "Order event",
                "help": "The event the order published, e.g. evt-7781.",
            },
            {
                "name": "channel",
                "type": "choice",
                "choices": ["web", "mobile", "partner"],
                "default": "web",
                "label": "Sales channel",
                "help": "Where the order came from (recorded with the order's cancellation).",
            },
        ],
        "steps": [
            {
                "system": "orders-api",
                "action_type": "create_order",
                "params": {"order_id": "{params.order_id}", "channel": "{params.channel}"},
            },
            {
                "system": "events-queue",
                "action_type": "publish_event",
                "params": {"event_id": "{params.event_id}"},
            },
            {
                "system": "orders-db",
                "action_type": "insert_order_row",
                "params": {"order_id": "{params.order_id}"},
            },
        ],
    },
]


# A policy naming runbook versions can only be imported once they are published, so it is
# not in estate.yaml: ``runbooks_policy_document`` adds it to that document after them.
PREAPPROVAL = {
    "name": "preapproved-runbooks",
    "description": "Cancelling a stuck order with its reviewed runbook needs no approval: the "
    "approvals of the broad policies (critical) are waived for this runbook version.",
    "scope": {"runbooks": ["cancel-order@1"]},
    "approvals": 0,
    "preapproves_runbooks": True,
}


def with_runbook_policies(doc: dict) -> dict:
    """The demo estate document plus the policy pre-approving a demo runbook."""
    return doc | {"policies": [*doc.get("policies", []), PREAPPROVAL]}


def runbooks(*, actor) -> str:
    """Publish the demo runbooks that have no version yet (an admin's newer version stays)."""
    from runbooks.models import IncidentType, Runbook
    from runbooks.services import incident_types_ensure, runbook_create, runbook_version_publish

    incident_types_ensure(actor=actor)
    published = []
    for spec in RUNBOOKS:
        runbook = Runbook.objects.filter(slug=spec["slug"]).first() or runbook_create(
            slug=spec["slug"],
            name=spec["name"],
            description=spec["description"],
            incident_type=IncidentType.objects.get(slug=spec["incident_type"]),
            actor=actor,
        )
        if runbook.latest_version() is None:
            version = runbook_version_publish(
                runbook=runbook,
                parameters=spec["parameters"],
                steps=spec["steps"],
                actor=actor,
                note="demo",
            )
            published.append(str(version))
    return f"runbooks: {', '.join(published) or 'up to date'}"
