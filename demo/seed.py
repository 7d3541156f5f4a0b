"""The demo's failed process run, and the target database its SQL compensation touches."""

from __future__ import annotations

import sqlite3

import dj_database_url

from rollbacks import runs
from rollbacks.targets import target_urls

ORDERS = (1001, 1002)


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
