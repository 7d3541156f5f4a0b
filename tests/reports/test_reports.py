"""Post-incident reports: one builder, sections from settings, the page and its downloads."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from django.urls import reverse

from governance import services as governance
from governance.models import ApprovalPolicy
from ledger.models import Entry
from reports.builder import markdown_table, report_build
from rollbacks import engine
from rollbacks.models import Rollback
from tests.drills.test_drills import _drain
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
R = Rollback.State


@pytest.fixture
def finished(make_system, target_server, tmp_path, monkeypatch, alice, bob):
    """A real rollback: approved by bob with an attestation, run, a manual step resolved."""
    base, state = target_server
    db_path = tmp_path / "orders.sqlite3"
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{db_path}")
    engine_estate.make_orders_db(db_path, [1, 99])
    engine_estate.build(make_system, base)
    ApprovalPolicy.objects.create(
        name="everything",
        approvals_required=1,
        attestations=[{"key": "billing", "label": "Billing impact understood"}],
    )
    rollback = engine.rollback_plan(
        run=engine_estate.failed_run(orders=1), actor=alice, reason="bad | migration"
    )
    governance.rollback_approve(
        rollback=rollback,
        approver=bob,
        comment="plan checked with on-call",
        attestations={"billing": "no invoices touched"},
    )
    engine.rollback_start(rollback=rollback, actor=alice)
    _drain(rollback)
    engine.step_resolve(
        step=rollback.steps.get(system__slug="payment-gateway"), actor=alice, note="refunded"
    )
    rollback.refresh_from_db()
    assert rollback.state == R.SUCCEEDED
    return rollback


def _rows(report, key):
    return report.section(key).rows


def test_report_of_a_finished_rollback_has_every_section_with_real_figures(finished):
    report = report_build(finished)
    keys = [s.key for s in report.sections]
    assert keys == [
        "summary",
        "metrics",
        "decisions",
        "stages",
        "waits",
        "steps",
        "reconciliation",
        "timeline",
    ]
    assert report.is_final and report.section("drill") is None  # not a drill
    metrics = {r["Metric"]: r["Value"] for r in _rows(report, "metrics")}
    assert metrics["Time to approval"] >= 0 and metrics["Duration"] >= 0
    assert metrics["Time to recover (MTTR)"] >= metrics["Duration"]
    assert metrics["Attempts"] == 3 and metrics["Retries"] == 0
    decisions = _rows(report, "decisions")
    approval = next(r for r in decisions if r["Decision"] == "approved")
    assert approval["Who"] == "bob" and approval["Why"] == "plan checked with on-call"
    assert approval["Details"] == "attestation billing: no invoices touched"
    assert [r["Decision"] for r in decisions if r["Who"] == "alice"] == [
        "requested the rollback",
        "approval policy applied",
        "submitted to the approval policies",
        "started",
        "resolved a manual step",
    ]
    stages = _rows(report, "stages")
    assert [r["Stage"] for r in stages] == ["whole rollback", 1, 2, 3]
    assert all(r["Duration (s)"] is not None and r["Duration (s)"] >= 0 for r in stages)
    waits = {r["Waiting for"]: r for r in _rows(report, "waits")}
    assert waits["approval"]["Ended by"] == "bob: approval complete"
    assert waits["someone to start it"]["Ended by"] == "alice: started"
    manual = next(r for k, r in waits.items() if k.startswith("a human to do it by hand"))
    assert manual["Ended by"] == "alice: resolved a manual step"
    steps = {r["System"]: r for r in _rows(report, "steps")}
    assert (
        steps["orders-api"]["Ran as"] == "http" and steps["orders-api"]["Attempts"] == "1 succeeded"
    )
    assert steps["payment-gateway"]["Note or error"] == "refunded"
    assert len(_rows(report, "timeline")) == Entry.objects.filter(rollback_id=finished.pk).count()


def test_markdown_and_printable_html_downloads_are_ledgered(finished, alice, client):
    client.force_login(alice)
    md = client.get(reverse("rollback-report-md", args=[finished.pk]))
    assert md.status_code == 200
    assert md["Content-Type"] == "text/markdown; charset=utf-8"
    assert md["Content-Disposition"] == f'attachment; filename="rollback-{finished.pk}-report.md"'
    text = md.content.decode()
    assert text.startswith(f"# Post-incident report: rollback #{finished.pk} of ")
    assert (
        "## Decisions: who and why" in text and "attestation billing: no invoices touched" in text
    )
    assert "bad \\| migration" in text  # a pipe in a cell does not break the table
    assert "DRILL" not in text and "Provisional" not in text
    html = client.get(reverse("rollback-report-html", args=[finished.pk]))
    assert html.status_code == 200 and html["Content-Type"] == "text/html; charset=utf-8"
    assert (
        html["Content-Disposition"] == f'attachment; filename="rollback-{finished.pk}-report.html"'
    )
    body = html.content.decode()
    css = re.search(r"<style>(.*?)</style>", body, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in html["Content-Security-Policy"]
    assert "@media print" in css and "<script" not in body
    assert 'id="report-decisions"' in body and '<th scope="col">Waited (s)</th>' in body
    exports = Entry.objects.filter(action="report.exported", rollback_id=finished.pk).order_by("id")
    assert [e.payload["format"] for e in exports] == ["markdown", "html"]
    assert exports[0].payload["sha256"] == hashlib.sha256(md.content).hexdigest()
    assert exports[0].actor == "user:alice" and exports[0].payload["is_drill"] is False


def test_report_page_for_those_who_see_the_rollback(finished, alice, carol, mallory, client):
    url = reverse("rollback-report", args=[finished.pk])
    client.force_login(mallory)
    assert client.get(url).status_code == 404
    assert client.get(reverse("rollback-report-md", args=[finished.pk])).status_code == 404
    client.force_login(carol)  # the auditor reads and downloads
    page = client.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="report-download-md"' in text and 'id="report-timeline"' in text
    assert not Entry.objects.filter(action="report.exported").exists()  # reading is no export


def extra_section(rollback):
    """A provider like the ones other apps add to UNWIND_REPORT_SECTIONS."""
    return {
        "title": "Reconciliation findings",
        "rows": [{"Check": "dupes", "Found": 0}],
        "markdown": "| Check | Found |\n| --- | --- |\n| dupes | 0 |",
    }


def test_sections_come_from_the_setting(finished, settings):
    settings.UNWIND_REPORT_SECTIONS = [
        "reports.sections.summary",
        "tests.reports.test_reports.extra_section",
    ]
    report = report_build(finished)
    assert [s.key for s in report.sections] == ["summary", "reconciliation-findings"]
    assert "## Reconciliation findings\n\n| Check | Found |" in report.markdown()
    assert report.section("reconciliation-findings").columns == ["Check", "Found"]


def test_provisional_report_of_a_rollback_under_way(make_system, target_server, alice):
    engine_estate.build(make_system, target_server[0])
    rollback = engine.rollback_plan(run=engine_estate.failed_run(), actor=alice, reason="r")
    report = report_build(rollback)
    assert not report.is_final
    assert "> Provisional: the rollback is approved." in report.markdown()
    waits = report.section("waits").rows
    assert waits[0]["Until"] == "still waiting" and waits[0]["Waited (s)"] >= 0


def test_markdown_table_escapes_and_folds():
    assert markdown_table([{"a": "x|y", "b": "two\nlines"}, {"a": None, "b": 3}]) == (
        "| a | b |\n| --- | --- |\n| x\\|y | two lines |\n| — | 3 |"
    )
    assert markdown_table([]) == "_Nothing to report._"


def test_user_text_cannot_break_out_of_a_heading_or_a_cell(make_system, target_server, alice):
    """The Markdown report put newlines and raw HTML of user text into headings and table
    cells; the HTML report escapes them (issue 16)."""
    engine_estate.build(make_system, target_server[0])
    run = engine_estate.failed_run(external_id="x\n# Injected <img src=x onerror=alert(1)>")
    rollback = engine.rollback_plan(run=run, actor=alice, reason="undo\n<script>alert(1)</script>")
    text = report_build(rollback).markdown()
    assert "<img" not in text and "<script>" not in text
    assert "\n# Injected" not in text
    assert (
        text.splitlines()[0].startswith("# Post-incident report")
        and "&lt;img" in text.splitlines()[0]
    )
    assert markdown_table([{"a": "<b>x</b>\nnext"}]).endswith("| &lt;b&gt;x&lt;/b&gt; next |")


def test_a_report_costs_the_same_queries_whatever_its_size(make_system, target_server, alice):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    engine_estate.build(make_system, target_server[0])
    counts = []
    for orders, name in ((1, "small"), (6, "large")):
        rollback = engine.rollback_plan(
            run=engine_estate.failed_run(orders=orders, external_id=name),
            actor=alice,
            reason="r",
            is_drill=True,
        )
        engine.rollback_abort(rollback=rollback, actor=alice, reason="done")
        with CaptureQueriesContext(connection) as queries:
            report = report_build(rollback)
        assert len(report.section("steps").rows) == 1 + 2 * orders + 1
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
