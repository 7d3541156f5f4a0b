"""An orders database as a reconciliation target: a second PostgreSQL database with
``orders`` (an external reference that should be unique but is not enforced) and
``order_items`` (whose order may be gone), and a contract whose checks find both."""

from __future__ import annotations

import uuid

import psycopg

from rollbacks import runs, services

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"

DUPLICATES = {
    "name": "duplicate_refs",
    "kind": "sql",
    "database": "orders",
    "query": "SELECT o.id, o.external_ref FROM orders o WHERE EXISTS "
    "(SELECT 1 FROM orders p WHERE p.external_ref = o.external_ref AND p.id < o.id) ORDER BY o.id",
    "columns": ["id", "external_ref"],
    "category": "duplicate_key",
    "description": "A second order with the same external reference",
    "compensation": {
        "kind": "sql",
        "database": "orders",
        "statement": "DELETE FROM orders WHERE id = %(id)s",
        "params": {"id": "{finding.id}"},
    },
    "timeout_s": 5,
}
ORPHANS = {
    "name": "orphaned_items",
    "kind": "sql",
    "database": "orders",
    "query": "SELECT i.id, i.order_id FROM order_items i LEFT JOIN orders o ON o.id = i.order_id"
    " WHERE o.id IS NULL ORDER BY i.id",
    "columns": ["id", "order_id"],
    "category": "orphaned_record",
    "description": "An order item whose order is gone",
    "compensation": {
        "kind": "sql",
        "database": "orders",
        "statement": "DELETE FROM order_items WHERE id = %(id)s",
        "params": {"id": "{finding.id}"},
    },
}


def create_target(monkeypatch, *, dirty: bool = True) -> str:
    """A new database; ``TARGET_DATABASE_ORDERS`` points at it (set before a worker starts).

    Orders 1 and 2 are what the failed run inserted (the rollback deletes them). Dirty: order
    11 duplicates order 10's reference, and item 100 belongs to order 1, so the rollback
    orphans it. Clean: neither."""
    name = f"unwind_target_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgres://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id integer PRIMARY KEY, external_ref text)")
        conn.execute("CREATE TABLE order_items (id integer PRIMARY KEY, order_id integer)")
        conn.execute("INSERT INTO orders VALUES (1, 'r1'), (2, 'r2'), (10, 'r10')")
        conn.execute("INSERT INTO order_items VALUES (101, 10)")
        if dirty:
            conn.execute("INSERT INTO orders VALUES (11, 'r10')")
            conn.execute("INSERT INTO order_items VALUES (100, 1)")
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", url)
    return name


def drop_target(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def rows(url: str, table: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]  # noqa: S608


def build(make_system, *, checks=None):
    system = make_system("orders-db", kind="database", tier=1)
    services.contract_publish(
        system=system,
        actor="test",
        actions={
            "insert_order": {
                "compensation": {
                    "kind": "sql",
                    "database": "orders",
                    "statement": "DELETE FROM orders WHERE id = %(id)s",
                    "params": {"id": "{params.order_id}"},
                },
                "attempts": 3,
                "backoff": {"initial_s": 0.05, "max_s": 0.1},
                "timeout_s": 5,
            }
        },
        reconciliation=[DUPLICATES, ORPHANS] if checks is None else checks,
    )
    return system


def failed_run(external_id: str = "run-1"):
    run, _ = runs.run_register(process="checkout-migration", external_id=external_id, actor="test")
    for i in (1, 2):
        runs.action_report(
            run=run,
            system_slug="orders-db",
            action_type="insert_order",
            idempotency_key=f"a-db-{i}",
            actor="test",
            params={"order_id": i},
        )
    runs.run_fail(run=run, reason="step 3 of 4 timed out", actor="test")
    return run


def gateway_rollback(make_system, alice, checks: list[dict]):
    """A payment gateway whose contract has ``checks``, and a rollback of one capture that
    ended (aborted before it ran), so its reconciliation is queued."""
    from rollbacks import engine

    system = make_system("payment-gateway", kind="third_party_api")
    services.contract_publish(
        system=system,
        actor="test",
        actions={"capture": {"compensation": {"kind": "simulated"}}},
        reconciliation=checks,
    )
    run, _ = runs.run_register(process="checkout", external_id="r-1", actor="test")
    runs.action_report(
        run=run,
        system_slug="payment-gateway",
        action_type="capture",
        idempotency_key="c",
        actor="test",
    )
    runs.run_fail(run=run, reason="boom", actor="test")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="r")
    return engine.rollback_abort(rollback=rollback, actor=alice, reason="stop")


def captures_check(base: str) -> dict:
    """An HTTP check on the loopback target: every effect it recorded is a capture that
    survived the unwind; the suggestion voids it."""
    return {
        "name": "captures_in_flight",
        "kind": "http",
        "url": base + "/_effects",
        "findings": "effects",
        "columns": ["path", "key"],
        "category": "in_flight_transaction",
        "description": "A capture that survived the unwind",
        "compensation": {
            "kind": "http",
            "method": "POST",
            "url": base + "/payments/void/{finding.key}",
            "body": {"rollback": "{rollback.id}"},
        },
    }
