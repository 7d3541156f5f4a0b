"""A three-stage estate against real loopback targets, shared by the engine tests.

flags (stage 1, simulated) → orders-api (stage 2, HTTP to the loopback target)
→ orders-db (stage 3, SQL on a target database), plus payment-gateway (a point of no
return: a manual step, stage 3 as well).
"""

from __future__ import annotations

import sqlite3
import time

from rollbacks import runs, services
from rollbacks.models import DependencyEdge

BEFORE = DependencyEdge.Kind.BEFORE


def build(make_system, base_url: str, *, orders_db_url_env: str = "orders", api_compensation=None):
    systems = {
        "flags": make_system("flags", kind="feature_flag", team="payments", tier=3),
        "orders-api": make_system("orders-api"),
        "orders-db": make_system("orders-db", kind="database", tier=1),
        "payment-gateway": make_system("payment-gateway", kind="third_party_api", tier=1),
    }
    services.dependency_map_publish(
        edges=[
            (BEFORE, "flags", "orders-api"),
            (BEFORE, "orders-api", "orders-db"),
            (BEFORE, "orders-api", "payment-gateway"),
        ],
        actor="test",
    )
    policy = {"attempts": 3, "backoff": {"initial_s": 0.05, "max_s": 0.1}, "timeout_s": 5}
    services.contract_publish(
        system=systems["flags"],
        actor="test",
        actions={
            "enable_flag": {"compensation": {"kind": "simulated", "latency_ms": 10}, **policy}
        },
    )
    services.contract_publish(
        system=systems["orders-api"],
        actor="test",
        actions={
            "create_order": {
                "compensation": api_compensation
                or {
                    "kind": "http",
                    "method": "POST",
                    "url": base_url + "/orders-api/orders/{params.order_id}/cancel",
                    "body": {"reason": "{rollback.reason}"},
                },
                **policy,
            }
        },
    )
    services.contract_publish(
        system=systems["orders-db"],
        actor="test",
        actions={
            "insert_order": {
                "compensation": {
                    "kind": "sql",
                    "database": orders_db_url_env,
                    "statement": "DELETE FROM orders WHERE id = %(id)s",
                    "params": {"id": "{params.order_id}"},
                },
                **policy,
            }
        },
    )
    services.contract_publish(
        system=systems["payment-gateway"],
        actor="test",
        actions={"capture_payment": {"point_of_no_return": True}},
    )
    return systems


def failed_run(*, orders: int = 1, with_payment: bool = True, external_id: str = "run-1"):
    run, _ = runs.run_register(process="checkout-migration", external_id=external_id, actor="test")
    runs.action_report(
        run=run,
        system_slug="flags",
        action_type="enable_flag",
        idempotency_key="a-flag",
        actor="test",
        params={"flag": "new-checkout"},
    )
    for i in range(1, orders + 1):
        runs.action_report(
            run=run,
            system_slug="orders-db",
            action_type="insert_order",
            idempotency_key=f"a-db-{i}",
            actor="test",
            params={"order_id": i},
        )
        runs.action_report(
            run=run,
            system_slug="orders-api",
            action_type="create_order",
            idempotency_key=f"a-api-{i}",
            actor="test",
            params={"order_id": i},
        )
    if with_payment:
        runs.action_report(
            run=run,
            system_slug="payment-gateway",
            action_type="capture_payment",
            idempotency_key="a-pay",
            actor="test",
            params={"payment_id": "pay_1"},
        )
    runs.run_fail(run=run, reason="step 4 of 5 timed out", actor="test")
    return run


def make_orders_db(path, ids) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, status TEXT)")
    conn.executemany("INSERT INTO orders (id, status) VALUES (?, 'new')", [(i,) for i in ids])
    conn.commit()
    conn.close()


def order_ids(path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM orders ORDER BY id")]
    finally:
        conn.close()


def chain_run(make_system, n: int, *, tag: str = "chain"):
    """A run with one completed no-op forward action on each of ``n`` systems chained by
    ``before`` edges: a rollback of it has ``n`` stages of one simulated step."""
    slugs = [f"{tag}-{i}" for i in range(n)]
    noop = {"undo": {"compensation": {"kind": "simulated", "latency_ms": 0}}}
    for slug in slugs:
        services.contract_publish(system=make_system(slug, tier=3), actor="test", actions=noop)
    services.dependency_map_publish(
        edges=[(BEFORE, a, b) for a, b in zip(slugs, slugs[1:], strict=False)], actor="test"
    )
    run, _ = runs.run_register(process="chain", external_id=tag, actor="test")
    for i, slug in enumerate(slugs):
        runs.action_report(
            run=run,
            system_slug=slug,
            action_type="undo",
            idempotency_key=f"{tag}-{i}",
            actor="test",
        )
    return run


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def orders_in(url: str) -> list[int]:
    """The ids left in the SQL target's ``orders`` table."""
    import psycopg

    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]


def state_of(rollback) -> str:
    from rollbacks.models import Rollback

    return Rollback.objects.values_list("state", flat=True).get(pk=rollback.pk)


def step_of(rollback, slug):
    from rollbacks.models import Step

    return Step.objects.get(rollback=rollback, system__slug=slug)


def assert_stages_in_order(rollback) -> None:
    """Each stage started after the one before it finished (SPEC invariant 3)."""
    from rollbacks.models import Stage

    times = []
    for stage in Stage.objects.filter(rollback=rollback).order_by("index"):
        times += [stage.started_at, stage.finished_at]
    assert times and times == sorted(times), times
