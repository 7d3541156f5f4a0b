"""The `unwind` command line against a live server and a real Celery worker, from the CLI
alone: the failed run is found with `runs`, a first plan is rejected (and `watch` says so
with a non-zero exit), a second one is planned, refused to its own requester (four-eyes,
the field named), approved with a second token, started and watched to the end, the manual
step resolved while `watch` runs; then the estate is exported and dry-run imported, and the
rollback's ledger exported and verified."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from governance.models import ApprovalPolicy
from rollbacks import runs
from tests.conftest import WORKER_ARGS, service_token, start_celery, stop_process
from tests.ledger.conftest import TEST_KEY
from tests.rollbacks import engine_estate

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.timeout(180),
    pytest.mark.django_db(transaction=True),
]


class Cli:
    def __init__(self, url: str, home) -> None:
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("UNWIND_", "DJANGO"))
        } | {"UNWIND_URL": url, "XDG_CONFIG_HOME": str(home), "COLUMNS": "150"}

    def popen(self, token: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "unwind_cli", *args],
            env=self.env | {"UNWIND_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def __call__(self, token: str, *args: str) -> tuple[int, str]:
        proc = self.popen(token, *args)
        output, _ = proc.communicate(timeout=60)
        return proc.returncode, output

    def json(self, token: str, *args: str):
        code, output = self(token, "--json", *args)
        assert code == 0, output
        return json.loads(output)


def test_a_rollback_from_the_command_line_alone(
    live_server, make_system, target_server, tmp_path, monkeypatch, settings, django_user_model
):
    import redis

    settings.LEDGER_SIGNING_KEY = TEST_KEY
    base, target = target_server
    db_path = tmp_path / "orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{db_path}")
    engine_estate.make_orders_db(db_path, [1, 2])
    engine_estate.build(make_system, base)
    ApprovalPolicy.objects.create(name="tier-1", tiers=[1], approvals_required=1)
    oncall = service_token(django_user_model, "oncall", "operator", "approver", "team:payments")
    approver = service_token(django_user_model, "approver", "approver", "team:payments")
    admin = service_token(django_user_model, "estate-admin", "admin", "auditor")
    # The process's own reports (what an automated process sends through the API).
    reporter = django_user_model.objects.get(username="oncall")
    run, _ = runs.run_register(process="checkout-migration", external_id="7", actor=reporter)
    reports = [
        ("flags", "enable_flag", {"flag": "f"}),
        ("orders-db", "insert_order", {"order_id": 1}),
        ("orders-api", "create_order", {"order_id": 1}),
        ("payment-gateway", "capture_payment", {"payment": "p1"}),
    ]
    for i, (system, action_type, params) in enumerate(reports):
        runs.action_report(
            run=run,
            system_slug=system,
            action_type=action_type,
            idempotency_key=f"a{i}",
            params=params,
            actor=reporter,
        )
    runs.run_fail(run=run, reason="timed out", actor=reporter)

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    worker = start_celery(WORKER_ARGS, tmp_path / "worker.log")
    cli = Cli(live_server.url, tmp_path)
    try:
        listed = cli.json(oncall, "runs", "--status", "failed")
        assert [(r["id"], r["rollback"]) for r in listed] == [(run.pk, None)]

        first = cli.json(oncall, "plan", str(run.pk), "--reason", "undo run 7")
        assert first["awaits_approval"] is True
        code, output = cli(approver, "reject", str(first["id"]), "--comment", "wrong run")
        assert code == 0, output
        code, output = cli(oncall, "watch", str(first["id"]))
        assert code == 1 and "aborted" in output, output

        code, output = cli(oncall, "plan", str(run.pk), "--reason", "undo run 7, again")
        assert code == 0 and "Awaits approval" in output, output
        rid = re.search(r"Rollback #(\d+)", output)[1]
        code, output = cli(oncall, "start", rid)
        assert code == 1 and "error 400" in output and "  state: " in output, output
        code, output = cli(oncall, "approve", rid, "--comment", "mine, looks fine")
        assert code == 1 and "error 403" in output and "four-eyes" in output, output
        code, output = cli(approver, "approve", rid, "--comment", "checked the plan")
        assert code == 0 and "approved" in output, output
        code, output = cli(oncall, "start", rid)
        assert code == 0 and "running" in output, output

        watching = cli.popen(oncall, "watch", rid, "--interval", "0.2", "--timeout", "90")
        lines = []
        for line in watching.stdout:
            lines.append(line)
            if "waits for a human" in line:
                step = re.search(r"unwind resolve (\d+)", line)[1]
                code, output = cli(oncall, "resolve", step, "--note", "refunded in the console")
                assert code == 0, output
        assert watching.wait(timeout=30) == 0, "".join(lines)
        transcript = "".join(lines)
        (tmp_path / "watch.txt").write_text(transcript)
        assert "rollback: running" in transcript
        assert re.search(r"stage 1 step \d+ flags enable_flag: .*succeeded", transcript)
        assert f"rollback #{rid} succeeded." in transcript
        assert engine_estate.order_ids(db_path) == [2]
        assert [e["path"] for e in target.effects] == ["/orders-api/orders/1/cancel"]

        code, output = cli(oncall, "show", rid)
        assert code == 0 and "refunded in the console" in output, output

        estate = tmp_path / "estate.yaml"
        assert cli(admin, "estate", "export", "-o", str(estate))[0] == 0
        estate.write_text(estate.read_text().replace("name: Orders Api", "name: Orders API"))
        code, output = cli(admin, "estate", "import", str(estate), "--dry-run")
        assert code == 0, output
        assert "~ system orders-api: name" in output and "would change: 1" in output, output
        code, output = cli(oncall, "estate", "export")
        assert code == 1 and "error 403" in output, output

        export = tmp_path / "rollback.jsonl"
        code, output = cli(admin, "ledger", "export", "-o", str(export), "--rollback", rid)
        assert code == 0 and "OK: " in output, output
        assert (tmp_path / "rollback.jsonl.manifest.json").exists()
        code, output = cli(admin, "ledger", "export", "-o", str(export), "--from", "yesterday")
        assert code == 1 and "error 400" in output and "  from: " in output, output
    finally:
        stop_process(worker)
