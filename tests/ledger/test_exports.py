"""Exports: JSON Lines and CSV, filtered like the view, streamed, signed, ledgered, and
verified offline by `python -m ledger.verify_export` (and by stock openssl)."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from ledger import signing
from ledger.canonical import canonical_json
from ledger.exports import export_create, export_stream
from ledger.models import Entry, Export
from ledger.verify_export import ExportInvalid, verify_export

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def _export(tmp_path, fmt="jsonl", **filters):
    out = tmp_path / f"ledger.{fmt}"
    args = [f"--{name}={value}" for name, value in filters.items()]
    call_command("export_ledger", f"--format={fmt}", f"--out={out}", *args)
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    return out, manifest


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_verifies_offline_with_its_manifest(tmp_path, ledger_rows, fmt):
    out, manifest = _export(tmp_path, fmt)
    signed = manifest["manifest"]
    assert signed["count"] == len(ledger_rows)
    assert (
        signed["first_hash"] == ledger_rows[0].hash and signed["last_hash"] == ledger_rows[-1].hash
    )
    message = verify_export(out, manifest, pinned=signing.public_key_b64())
    assert message.startswith(f"OK: {len(ledger_rows)} entries, 5 chain links checked")
    # The documented command, in a process without Django.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.verify_export",
            str(out),
            str(out) + ".manifest.json",
            "--public-key",
            signing.public_key_b64(),
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: 8 entries")


def test_a_jsonl_line_is_the_entry_with_its_hash(tmp_path, ledger_rows):
    out, _ = _export(tmp_path)
    first = _lines(out)[0]
    entry = ledger_rows[0]
    assert first["id"] == entry.pk and first["hash"] == entry.hash and first["seq"] == 1
    assert first["payload"] == {"i": 0} and first["at"].endswith("Z")
    assert list(first) == sorted(first)


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path, write):
    write(
        actor="=cmd|' /C calc'!A0",
        action="+SUM(1,2)",
        subject_type="@evil",
        subject_id="-2",
        reason="\tTAB",
        trace_id="",
        payload={"x": "=1+1"},
    )
    write(reason="\rCR", actor="'already quoted", action="plain")
    out, manifest = _export(tmp_path, "csv")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["actor"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["action"] == "'+SUM(1,2)"
    assert rows[0]["subject_type"] == "'@evil" and rows[0]["subject_id"] == "'-2"
    assert rows[0]["reason"] == "'\tTAB" and rows[1]["reason"] == "'\rCR"
    assert rows[1]["actor"] == "''already quoted" and rows[1]["action"] == "plain"
    assert rows[0]["payload"] == '{"x": "=1+1"}'  # starts with {: nothing to neutralise
    for row in rows:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())
    # Neutralising is undone exactly, so the entries still match their hashes offline.
    assert verify_export(out, manifest).startswith("OK: 2 entries")


def test_exports_are_filtered_like_the_view(tmp_path, write):
    old = write(rollback_id=1, action="step.attempt.succeeded", payload={"system": "orders-db"})
    write(rollback_id=1, action="step.attempt.failed", outcome="failed", trace_id="a" * 32)
    write(rollback_id=2, action="step.attempt.succeeded", actor="user:alice")
    write(action="estate.imported", subject_type="system", subject_id="orders-db")
    cases = {
        (("rollback", 1),): 2,
        (("action", "step.attempt"),): 3,
        (("action", "step.attempt.failed"),): 1,
        (("outcome", "failed"),): 1,
        (("trace", "A" * 32),): 1,
        (("actor", "alice"),): 1,
        (("system", "orders-db"),): 2,
        (("rollback", 1), ("outcome", "ok")): 1,
        # (each export adds a ledger.exported entry: the action keeps them out of the count)
        (("from", (old.at + timedelta(microseconds=1)).isoformat()), ("action", "step")): 2,
        (("to", (old.at + timedelta(microseconds=1)).isoformat()),): 1,
    }
    for filters, expected in cases.items():
        out, manifest = _export(tmp_path, **dict(filters))
        assert manifest["manifest"]["count"] == expected, filters
        assert len(_lines(out)) == expected
        assert verify_export(out, manifest).startswith(f"OK: {expected} entries")


def test_an_export_is_ledgered_and_does_not_contain_itself(tmp_path, ledger_rows):
    out, manifest = _export(tmp_path, rollback=1)
    entry = Entry.objects.get(action="ledger.exported")
    assert entry.actor == "manage.py export_ledger"
    assert entry.payload["filters"] == {"rollback": 1} and entry.payload["format"] == "jsonl"
    assert manifest["manifest"]["ledger_entry_id"] == entry.pk == manifest["manifest"]["upto_id"]
    assert all(line["id"] < entry.pk for line in _lines(out))
    export = Export.objects.get()
    assert export.manifest == manifest and export.completed_at is not None


def test_a_forged_or_altered_export_is_refused(tmp_path, ledger_rows):
    out, manifest = _export(tmp_path)
    pinned = signing.public_key_b64()

    forged = json.loads(json.dumps(manifest))
    forged["manifest"]["count"] = 7
    with pytest.raises(ExportInvalid, match="signature does not verify"):
        verify_export(out, forged, pinned)

    # Re-signed by someone else's key: valid, but not the key the auditor trusts.
    other = signing._from_b64(signing.generate_key_b64(), "other")
    forged["manifest"]["public_key"] = signing.public_key_b64(other)
    forged["signature"] = signing.sign(canonical_json(forged["manifest"]), other)
    with pytest.raises(ExportInvalid, match="not by the key you trust"):
        verify_export(out, forged, pinned)

    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3] + lines[4:]))  # an entry removed from the file
    with pytest.raises(ExportInvalid, match="not the one the manifest describes"):
        verify_export(out, manifest, pinned)

    result = subprocess.run(
        [sys.executable, "-m", "ledger.verify_export", str(out), str(out) + ".manifest.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout.startswith("FAILED: the file is not the one")


def test_an_entry_changed_in_a_file_with_a_matching_manifest_is_refused(tmp_path, ledger_rows):
    """Whoever can sign a manifest still cannot make a changed entry match its hash."""
    out, manifest = _export(tmp_path)
    lines = out.read_text().splitlines(keepends=True)
    changed = json.loads(lines[2])
    changed["reason"] = "nothing to see"
    lines[2] = json.dumps(changed) + "\n"
    out.write_text("".join(lines))
    data = out.read_bytes()
    manifest["manifest"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest["signature"] = signing.sign(canonical_json(manifest["manifest"]))
    with pytest.raises(ExportInvalid, match="line 3 .* does not match its hash"):
        verify_export(out, manifest)


def test_the_manifest_verifies_with_stock_openssl(tmp_path, ledger_rows):
    """The recipe in docs/ledger.md, step by step."""
    out, manifest = _export(tmp_path)
    manifest_path = Path(str(out) + ".manifest.json")
    signed, sig, pem = tmp_path / "signed.json", tmp_path / "sig.bin", tmp_path / "pub.pem"
    extract = (
        "import json,sys; m=json.load(open(sys.argv[1])); "
        "sys.stdout.write(json.dumps(m['manifest'],sort_keys=True,separators=(',',':')))"
    )
    signed.write_bytes(
        subprocess.run(
            [sys.executable, "-c", extract, manifest_path], capture_output=True, check=True
        ).stdout
    )
    sig.write_bytes(base64.b64decode(manifest["signature"]))
    pem.write_text(manifest["public_key_pem"])
    ok = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            pem,
            "-rawin",
            "-in",
            signed,
            "-sigfile",
            sig,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout
    # jq gives the same bytes, for those who prefer it.
    jq = subprocess.run(["jq", "-cjS", ".manifest", manifest_path], capture_output=True, check=True)
    assert jq.stdout == signed.read_bytes()
    signed.write_bytes(signed.read_bytes().replace(b'"count":8', b'"count":9'))
    bad = subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            pem,
            "-rawin",
            "-in",
            signed,
            "-sigfile",
            sig,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0


def test_without_a_signing_key_no_export_starts(settings, ledger_rows):
    settings.LEDGER_SIGNING_KEY = ""
    settings.DEBUG = False
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        export_create(actor="test", format="jsonl", filters={})
    assert not Entry.objects.filter(action="ledger.exported").exists()


def test_the_stream_hands_out_bounded_chunks(write, monkeypatch):
    """Constant memory: the export is yielded in ~CHUNK_BYTES pieces, never as a whole."""
    from ledger import exports

    monkeypatch.setattr(exports, "CHUNK_BYTES", 2048)
    for i in range(60):
        write(rollback_id=i % 4, reason="x" * 200)
    export = export_create(actor="test", format="jsonl", filters={})
    chunks = list(export_stream(export))
    assert len(chunks) > 10
    assert max(len(c) for c in chunks) < 2048 + 2000
    export.refresh_from_db()
    assert export.manifest["manifest"]["count"] == 60
    assert export.manifest["manifest"]["bytes"] == sum(map(len, chunks))


def test_an_export_bounded_in_time(tmp_path, write):
    write()
    later = timezone.now() + timedelta(days=1)
    out, manifest = _export(tmp_path, **{"from": later.isoformat()})
    assert manifest["manifest"]["count"] == 0 and out.read_text() == ""
    assert verify_export(out, manifest).startswith("OK: 0 entries")
