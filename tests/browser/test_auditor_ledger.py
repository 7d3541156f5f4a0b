"""In Chromium, an auditor finds a rollback's entries in the ledger, exports them, and
verifies the export offline with the documented command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from rollbacks import engine
from rollbacks.management.commands.seed_demo import DEMO_PASSWORD
from rollbacks.models import ProcessRun
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def test_auditor_finds_exports_and_verifies_a_rollbacks_entries(
    page, live_server, tmp_path, settings
):
    from ledger import signing

    settings.LEDGER_SIGNING_KEY = signing.generate_key_b64()
    call_command("seed_demo")
    alice = get_user_model().objects.get(username="alice")
    rollback = engine.rollback_plan(
        run=ProcessRun.objects.get(external_id="demo-1"),
        actor=alice,
        reason="checkout migration failed",
    )

    base = live_server.url
    page.goto(f"{base}/login/")
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}/")  # the overview
    page.get_by_role("link", name="Ledger").click()
    page.get_by_label("Rollback", exact=True).fill(str(rollback.pk))
    page.get_by_role("button", name="Search").click()
    rows = page.locator("tbody tr")
    shown = rows.count()
    assert shown >= 3  # planned, policy applied, submitted
    assert all(f"rollback:{rollback.pk}" in rows.nth(i).inner_text() for i in range(shown))
    screenshot(page, "auditor-1-rollback-entries")

    page.get_by_role("button", name="Export JSON Lines").click()
    with page.expect_download() as first:
        page.get_by_role("link", name="Download").first.click()
    export_path = tmp_path / first.value.suggested_filename
    first.value.save_as(export_path)
    # The manifest is ready once the file was downloaded in full.
    page.reload()
    manifest_link = page.get_by_role("link", name="manifest.json")
    manifest_link.wait_for(timeout=15000)
    with page.expect_download() as second:
        manifest_link.click()
    manifest_path = tmp_path / second.value.suggested_filename
    second.value.save_as(manifest_path)
    screenshot(page, "auditor-2-export")
    lines = export_path.read_text().splitlines()
    assert len(lines) == shown  # exactly the entries the filter showed

    verified = subprocess.run(
        [sys.executable, "-m", "ledger.verify_export", str(export_path), str(manifest_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A tampered copy is refused by the same command.
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(
        export_path.read_text().replace("checkout migration failed", "nothing happened", 1)
    )
    refused = subprocess.run(
        [sys.executable, "-m", "ledger.verify_export", str(tampered), str(manifest_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert page.csp_violations == []
