"""The real Prometheus (Debian's ``prometheus``) scrapes /metrics on loopback with its bearer
token while a real Celery worker runs a rollback, and its HTTP query API gives the
rollback's figures back, the worker's counters (multiprocess mode) included; and the
example alerting rules of docs/ pass ``promtool check rules`` and their unit tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from governance import api_hooks
from governance.models import ApprovalPolicy
from rollbacks import engine
from rollbacks.models import Rollback, Step
from tests.conftest import WORKER_ARGS, start_celery, stop_process
from tests.rollbacks import engine_estate

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus"


@pytest.mark.tools("promtool")  # Debian's prometheus
def test_the_example_alerting_rules_pass_promtool():
    for args, expected in [
        (["check", "rules", "unwind-alerts.yml"], "SUCCESS: 4 rules found"),
        (["test", "rules", "unwind-alerts.test.yml"], "SUCCESS"),
    ]:
        done = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True)
        assert done.returncode == 0 and expected in done.stdout, done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _eventually(base: str, promql: str, expected: float, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = _query(base, promql)
        if result and float(result[0]["value"][1]) == expected:
            return result
        assert time.monotonic() < deadline, f"{promql} = {result}, not {expected}"
        time.sleep(0.5)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.tools("prometheus")
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_prometheus_reads_a_rollbacks_figures_back(
    live_server, make_system, target_server, alice, bob, tmp_path, monkeypatch, settings
):
    import redis

    # Only the token lets the scraper in: the allow-list is empty.
    settings.METRICS_TOKEN = "scraper-token"
    settings.METRICS_ALLOW = []
    # This test's own multiprocess directory, so that no earlier run's counters add up.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "multiproc"))
    (tmp_path / "multiproc").mkdir()
    db_path = tmp_path / "orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{db_path}")
    engine_estate.make_orders_db(db_path, [1, 2])
    engine_estate.build(make_system, target_server[0])

    host, port = live_server.url.replace("http://", "").replace("localhost", "127.0.0.1").split(":")
    prom_port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: unwind\n"
        "    metrics_path: /metrics\n"
        "    authorization: {type: Bearer, credentials: scraper-token}\n"
        f"    static_configs: [{{targets: ['{host}:{port}']}}]\n"
    )
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    with open(tmp_path / "prometheus.log", "w") as log:
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        ApprovalPolicy.objects.create(name="tier-1", tiers=[1], approvals_required=1)
        rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
        api_hooks.approve(rollback, bob, "checked", {})
        engine.rollback_start(rollback=rollback, actor=alice)
        deadline = time.monotonic() + 60
        while (
            step := Step.objects.get(rollback=rollback, system__slug="payment-gateway")
        ).state != (Step.State.WAITING_HUMAN):
            assert time.monotonic() < deadline, step.state
            time.sleep(0.2)
        _eventually(base, 'unwind_steps_waiting_for_human{system="payment-gateway"}', 1)
        engine.step_resolve(step=step, actor=alice, note="refunded by hand")
        while Rollback.objects.get(pk=rollback.pk).state == Rollback.State.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert Rollback.objects.get(pk=rollback.pk).state == Rollback.State.SUCCEEDED

        figures = {
            'unwind_rollbacks_ended_total{state="succeeded",trigger="manual",drill="false"}': 1,
            'sum(unwind_step_attempts_total{outcome="succeeded"})': 3,
            'unwind_step_attempts_total{outcome="succeeded",system="orders-api"}': 1,
            "sum(unwind_step_duration_seconds_count)": 3,
            'sum(unwind_steps{state="succeeded"})': 4,
            "sum(unwind_steps_waiting_for_human)": 0,
            "unwind_time_to_approval_seconds_count": 1,
            'unwind_time_to_approval_seconds_bucket{le="+Inf"}': 1,
            'up{job="unwind"}': 1,
        }
        lines = []
        for promql, expected in figures.items():
            result = _eventually(base, promql, expected)
            lines.append(f"{promql} => {result[0]['value'][1]}")
        (tmp_path / "promql.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        stop_process(worker)
