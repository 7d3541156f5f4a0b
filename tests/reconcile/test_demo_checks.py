"""The demo estate's reconciliation checks (demo/estate.yaml), run against the demo's own
loopback targets (demo/targets.py) and its orders database: they find what a failed run
left behind and are clean once it is undone, so ``make run`` shows reconciliation at work."""

from __future__ import annotations

import httpx
import pytest
import yaml

from demo.seed import ORDERS, estate_text, prepare_orders_db
from reconcile.checks import run_check
from rollbacks.contracts import validate_reconciliation


@pytest.fixture
def checks(target_server, tmp_path, monkeypatch):
    """Each demo system's checks, pointed at this test's target server and orders database."""
    base, _ = target_server
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    prepare_orders_db()  # the rows the demo run inserted
    text = estate_text(base)
    contracts = yaml.safe_load(text)["contracts"]
    found = {c["system"]: c["reconciliation"] for c in contracts if c.get("reconciliation")}
    return base, found


def _outcome(check):
    outcome = run_check(check, {})
    return outcome.outcome, outcome.rows


def test_the_demo_defines_valid_checks_for_the_flag_and_the_orders(checks):
    _, found = checks
    assert {s: [c["name"] for c in cs] for s, cs in found.items()} == {
        "flags": ["checkout_flag_off"],
        "orders-db": ["orders_left_behind"],
    }
    assert all(validate_reconciliation(cs) == [] for cs in found.values())


def test_before_the_unwind_the_checks_find_the_flag_on_and_the_orders(checks):
    _, found = checks
    status, findings = _outcome(found["flags"][0])
    assert status == "findings" and findings[0]["body"]["enabled"] is True
    status, findings = _outcome(found["orders-db"][0])
    assert status == "findings"
    assert findings == [{"id": i, "status": "new"} for i in ORDERS]


def test_once_undone_the_checks_are_clean(checks, tmp_path):
    import sqlite3

    base, found = checks
    off = "/flags/api/admin/projects/default/features/new-checkout/environments/production/off"
    assert httpx.post(base + off).status_code == 200  # what the demo's flag step does
    with sqlite3.connect(tmp_path / "orders.sqlite3") as conn:  # what its SQL steps do
        conn.execute("DELETE FROM orders")
    assert _outcome(found["flags"][0]) == ("clean", [])
    assert _outcome(found["orders-db"][0]) == ("clean", [])
