"""A real Prometheus Alertmanager (Debian's ``prometheus-alertmanager`` 0.25) fires at the
app: the webhook is stored, a trigger rule plans a rollback of the run the alert names,
and under an auto-start policy a real Celery worker runs it to the end; a drill under a
policy that needs approval waits; the resolved alert is recorded.

Alertmanager runs on a loopback port with clustering off and its own storage, configured
by ``manage.py alertmanager_config``'s ``receiver_config`` (the snippet docs/alerts.md
shows), checked by ``amtool check-config``; alerts are fired with ``amtool alert add``.
Every wait is bounded and Alertmanager is always killed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import UTC, datetime

import httpx
import pytest
import yaml
from django.contrib.auth.models import Group

from governance.management.commands.alertmanager_config import receiver_config
from governance.models import Alert, ApprovalPolicy, TriggerRule
from ledger.models import Entry
from rollbacks.models import Rollback, Step
from rollbacks.tokens import token_create
from tests.conftest import WORKER_ARGS, start_celery, stop_process
from tests.rollbacks import engine_estate

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(180),
    pytest.mark.tools("prometheus-alertmanager", "amtool"),  # Debian's prometheus-alertmanager
]
R = Rollback.State


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def alertmanager(tmp_path):
    """Yields a function that starts Alertmanager for a given webhook base URL and token;
    whatever was started is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(base_url: str, token: str) -> str:
        port = _free_port()
        config = receiver_config(
            base_url,
            credentials=token,
            group_by=["alertname"],
            group_wait="1s",
            group_interval="1s",
            repeat_interval="1h",
        )
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        check = subprocess.run(
            ["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(tmp_path / "alertmanager.log", "w")  # noqa: SIM115 - closed at teardown
        proc = subprocess.Popen(
            [
                "prometheus-alertmanager",
                f"--config.file={path}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip: a single instance on loopback
                "--log.level=debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.log, proc.log_path = log, tmp_path / "alertmanager.log"
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready():
            if proc.poll() is not None:
                raise AssertionError("alertmanager exited:\n" + proc.log_path.read_text())
            try:
                return httpx.get(url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 20, "alertmanager to be ready")
        return url

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.log.close()


def amtool(url: str, *args: str) -> None:
    result = subprocess.run(
        ["amtool", "alert", "add", f"--alertmanager.url={url}", "--timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def orders_db(tmp_path, monkeypatch):
    """The SQL target: an SQLite file the worker reaches through TARGET_DATABASE_ORDERS."""
    path = tmp_path / "orders.sqlite3"
    engine_estate.make_orders_db(path, [1, 99])
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{path}")  # before the worker starts
    return path


@pytest.fixture
def worker(transactional_db, orders_db, tmp_path):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    proc = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    yield proc
    stop_process(proc)


def test_a_real_alertmanager_plans_and_auto_starts_a_rollback_on_a_real_worker(
    live_server, target_server, make_system, orders_db, worker, alertmanager, django_user_model
):
    timings: dict[str, float] = {}
    base, target = target_server
    engine_estate.build(make_system, base)
    run = engine_estate.failed_run(with_payment=False, external_id="checkout-42")
    drill_run = engine_estate.failed_run(with_payment=False, external_id="checkout-43")
    bot = django_user_model.objects.create_user("alertmanager")
    bot.groups.set([Group.objects.get_or_create(name=g)[0] for g in ("operator", "team:payments")])
    _, token = token_create(user=bot, name="alertmanager")
    ApprovalPolicy.objects.create(
        name="alert-auto",
        trigger_kinds=["alert"],
        drill_scope="real",
        approvals_required=0,
        auto_start=True,
    )
    ApprovalPolicy.objects.create(name="drills-need-approval", drill_scope="drill")
    TriggerRule.objects.create(
        name="checkout-errors",
        match={"alertname": "CheckoutErrorRate", "severity": "=~critical|page"},
        reason_template="{alertname} on {instance}",
    )
    TriggerRule.objects.create(
        name="checkout-drill", match={"alertname": "CheckoutDrill"}, drill=True
    )

    t0 = time.monotonic()
    am = alertmanager(live_server.url.replace("localhost", "127.0.0.1"), token)
    timings["alertmanager ready"] = time.monotonic() - t0

    # 1. A real alert, auto-start policy: planned, started, run to the end by the worker.
    t0 = time.monotonic()
    amtool(
        am,
        "alertname=CheckoutErrorRate",
        "severity=critical",
        "instance=web-1",
        "process_run=checkout-42",
        "--annotation=summary=checkout errors above 5%",
    )
    stored = _wait(
        lambda: Alert.objects.filter(labels__alertname="CheckoutErrorRate").first(),
        30,
        "the webhook to arrive",
    )
    timings["webhook stored"] = time.monotonic() - t0
    assert stored.status == "firing" and stored.labels["process_run"] == "checkout-42"
    assert stored.receiver == "unwind" and "CheckoutErrorRate" in stored.group_key
    assert stored.annotations == {"summary": "checkout errors above 5%"}
    assert len(stored.fingerprint) == 16  # Alertmanager's own fingerprint

    def matched():
        stored.refresh_from_db()
        return stored.outcome

    outcome = _wait(matched, 30, "the worker to match the alert")
    timings["rollback planned and started"] = time.monotonic() - t0
    rollback = Rollback.objects.get(run=run)
    assert outcome == (
        f"planned rollback #{rollback.pk} and started it (policy alert-auto let an alert start it)"
    )
    assert rollback.trigger == "alert" and rollback.requested_by == bot
    assert rollback.reason == "CheckoutErrorRate on web-1"

    def finished():
        return Rollback.objects.values_list("state", flat=True).get(pk=rollback.pk) in (
            Rollback.TERMINAL
        )

    _wait(finished, 60, "the rollback to finish on the worker")
    timings["rollback finished"] = time.monotonic() - t0
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED, rollback.outcome_summary
    assert set(Step.objects.filter(rollback=rollback).values_list("state", flat=True)) == {
        Step.State.SUCCEEDED
    }
    assert [e["path"] for e in target.effects] == ["/orders-api/orders/1/cancel"]
    assert engine_estate.order_ids(orders_db) == [99]
    assert Entry.objects.filter(action="alert.received", actor="user:alertmanager").count() == 1
    assert Entry.objects.filter(
        action="rollback.started", rollback_id=rollback.pk, actor="user:alertmanager"
    ).exists()

    # 2. A drill rule under a policy that needs an approval: planned, not started.
    t0 = time.monotonic()
    amtool(am, "alertname=CheckoutDrill", "process_run=checkout-43")
    drill_alert = _wait(
        lambda: Alert.objects.filter(labels__alertname="CheckoutDrill").exclude(outcome="").first(),
        30,
        "the drill alert to be matched",
    )
    timings["drill alert planned"] = time.monotonic() - t0
    drill = Rollback.objects.get(run=drill_run)
    assert drill_alert.outcome == (
        f"planned rollback #{drill.pk} (a drill); awaiting approval (policy drills-need-approval)"
    )
    time.sleep(1.0)
    drill.refresh_from_db()
    assert drill.is_drill and drill.state == R.AWAITING_APPROVAL
    assert drill.started_at is None

    # 3. Resolving the first alert: recorded, nothing planned.
    t0 = time.monotonic()
    amtool(
        am,
        "alertname=CheckoutErrorRate",
        "severity=critical",
        "instance=web-1",
        "process_run=checkout-42",
        "--annotation=summary=checkout errors above 5%",
        f"--end={datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
    )
    resolved = _wait(
        lambda: Alert.objects.filter(fingerprint=stored.fingerprint, status="resolved").first(),
        30,
        "the resolved notification",
    )
    timings["resolved stored"] = time.monotonic() - t0
    assert resolved.starts_at == stored.starts_at and resolved.ends_at is not None
    assert resolved.rollback == rollback and resolved.outcome.startswith("resolved: recorded")
    assert Rollback.objects.count() == 2
    assert Alert.objects.count() == 3  # Alertmanager sent nothing twice that was stored twice
    print("real alertmanager: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
