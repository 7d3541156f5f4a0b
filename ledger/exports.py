"""Exports of the ledger as JSON Lines or CSV, streamed with constant memory, each with a
signed manifest.

One export is one file and one manifest: ``export_create()`` ledgers it (``ledger.exported``)
and fixes its content (entries older than that entry, matching its filters); the file is
streamed once by ``export_stream()``, which computes the manifest as it goes and stores it
when the last byte has been produced. ``python -m ledger.verify_export`` checks a file
against its manifest offline.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from typing import Any

from django.db import connections, router, transaction
from django.db.models import TextField
from django.db.models.expressions import RawSQL
from django.utils import timezone
from guardian.shortcuts import assign_perm

from ledger import filters as ledger_filters
from ledger import signing
from ledger.canonical import (
    CSV_COLUMNS,
    FIELDS,
    canonical,
    canonical_json,
    csv_cells,
    format_at,
)
from ledger.models import Checkpoint, Entry, Export
from ledger.services import actor_label, record

CHUNK_ROWS = 2000  # rows fetched per round trip of the server-side cursor
CHUNK_BYTES = 64 * 1024  # bytes handed to the response at a time
CONTENT_TYPES = {
    Export.Format.JSONL: "application/x-ndjson; charset=utf-8",
    Export.Format.CSV: "text/csv; charset=utf-8",
}
MANIFEST_VERSION = 1


def export_create(*, actor: Any, format: str, filters: dict[str, Any]) -> Export:
    """Ledger an export and fix what it contains. Refuses (``ImproperlyConfigured``) before
    writing anything when there is no key to sign its manifest with."""
    if format not in Export.Format.values:
        raise ValueError(f"unknown export format {format!r}: use jsonl or csv")
    signing.private_key()
    user = actor if getattr(actor, "is_authenticated", False) else None
    with transaction.atomic():
        export = Export(
            created_by=actor_label(actor), created_by_user=user, format=format, filters=filters
        )
        entry = record(
            actor=actor,
            action="ledger.exported",
            subject_type="export",
            subject_id=export.id,
            payload={"export": str(export.id), "format": format, "filters": filters},
        )
        export.upto_id = export.entry_id = entry.id
        export.save(force_insert=True)
        if user is not None:  # its creator may fetch it again (ledger/access.py)
            assign_perm("ledger.view_export", user, export)
    return export


def _entries(export: Export):
    return ledger_filters.matching(export.filters).filter(id__lt=export.upto_id).order_by("id")


def _python_rows(queryset, export: Export) -> Iterator[tuple[str, list | str]]:
    """(hash, line or CSV cells) rendered in Python, for any database."""
    names = ("hash", *FIELDS)
    for row in queryset.values_list(*names).iterator(chunk_size=CHUNK_ROWS):
        values = dict(zip(names, row, strict=True))
        if export.format == Export.Format.JSONL:
            yield values["hash"], canonical(values, with_hash=values["hash"])
        else:
            yield values["hash"], csv_cells(values, values["hash"])


def _postgres_rows(queryset, export: Export) -> Iterator[tuple[str, list | str]]:
    """The same, with PostgreSQL rendering each whole JSON or CSV line."""
    from ledger.canonical import pg_canonical_sql

    if export.format == Export.Format.JSONL:
        rows = (
            queryset.annotate(_line=RawSQL(pg_canonical_sql(with_hash=True), ()))
            .values_list("hash", "_line", "id")
            .iterator(chunk_size=CHUNK_ROWS)
        )
        for digest, line, entry_id in rows:
            if line is None:  # a NULL somewhere (a tampered row): render it in Python
                values = queryset.model.objects.using(queryset.db).values(*FIELDS).get(pk=entry_id)
                line = canonical(values, with_hash=digest)
            yield digest, line
        return
    # CSV: PostgreSQL renders each whole line, cells neutralised and quoted (_PG_CSV_LINE).
    yield from (
        queryset.annotate(_line=RawSQL(_PG_CSV_LINE, (), output_field=TextField()))
        .values_list("hash", "_line")
        .iterator(chunk_size=CHUNK_ROWS)
    )


def _pg_csv_cell(name: str) -> str:
    """One cell of a CSV line, as SQL: the value as text (UTC time; '' for NULL), ``'``
    before a formula start as ``canonical.neutralise`` does, then quoted with quotes
    doubled; numbers and the time need neither."""
    ref = f'"ledger_entry"."{name}"'
    if name == "at":
        return f"""to_char({ref} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    if name in ("id", "seq"):
        return f"{ref}::text"
    value = f"coalesce({ref}::text, '')"
    # canonical.FORMULA_STARTS: = + - @, tab, carriage return, and the quote itself.
    starts = "'=', '+', '-', '@', chr(9), chr(13), chr(39)"
    neutral = f"CASE WHEN left({value}, 1) IN ({starts}) THEN chr(39) || {value} ELSE {value} END"
    return f"""'"' || replace({neutral}, '"', '""') || '"'"""


_PG_CSV_LINE = "(" + " || ',' || ".join(_pg_csv_cell(name) for name in CSV_COLUMNS) + ")"


def export_stream(export: Export) -> Iterator[bytes]:
    """The export's bytes, in chunks; stores the signed manifest after the last one.

    1. Stream the matching entries in id order through a server-side cursor, inside one
       transaction (so PostgreSQL streams instead of materialising a WITH HOLD cursor).
    2. Render each as a JSON line or a neutralised CSV row; hand out ~64 KiB at a time,
       hashing what is handed out (SHA-256 of the file) and counting entries.
    3. After the last chunk, sign the manifest and store it with the export.
    """
    key = signing.private_key()
    alias = router.db_for_read(Entry)
    digest, size, count = hashlib.sha256(), 0, 0
    first_hash = last_hash = ""
    buffer = io.StringIO()
    newline = "\r\n" if export.format == Export.Format.CSV else "\n"
    writer = csv.writer(buffer, lineterminator=newline)

    def take() -> bytes:
        nonlocal size
        data = buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
        digest.update(data)
        size += len(data)
        return data

    with transaction.atomic(using=alias):
        queryset = _entries(export).using(alias)
        if connections[alias].vendor == "postgresql":
            rows = _postgres_rows(queryset, export)
        else:
            rows = _python_rows(queryset, export)
        if export.format == Export.Format.CSV:
            writer.writerow(CSV_COLUMNS)
        for entry_hash, rendered in rows:
            if not count:
                first_hash = entry_hash
            last_hash = entry_hash
            count += 1
            if isinstance(rendered, str):  # a whole line, rendered by the database
                buffer.write(rendered)
                buffer.write(newline)
            else:
                writer.writerow(rendered)
            if buffer.tell() >= CHUNK_BYTES:
                yield take()
    if buffer.tell():
        yield take()
    document = build_manifest(
        export,
        count=count,
        first_hash=first_hash,
        last_hash=last_hash,
        sha256=digest.hexdigest(),
        size=size,
        key=key,
    )
    Export.objects.filter(pk=export.pk, completed_at__isnull=True).update(
        completed_at=timezone.now(), manifest=document
    )
    export.manifest = export.manifest or document


def build_manifest(
    export: Export, *, count: int, first_hash: str, last_hash: str, sha256: str, size: int, key=None
) -> dict[str, Any]:
    """The manifest document: ``manifest`` (what is signed, as ``canonical_json``),
    ``signature`` (Ed25519, base64) and the public key as PEM for ``openssl``."""
    key = key or signing.private_key()
    public = signing.public_key_b64(key)
    checkpoint = Checkpoint.objects.order_by("-seq").values("seq", "hash").first()
    manifest = {
        "version": MANIFEST_VERSION,
        "export_id": str(export.id),
        "format": export.format,
        "filters": export.filters,
        "upto_id": export.upto_id,
        "ledger_entry_id": export.entry_id,
        "created_at": format_at(export.created_at),
        "created_by": export.created_by,
        "count": count,
        "first_hash": first_hash,
        "last_hash": last_hash,
        "sha256": sha256,
        "bytes": size,
        "checkpoint": checkpoint,
        "public_key": public,
        "key_id": signing.key_id(public),
        "signed_at": format_at(timezone.now()),
    }
    return {
        "manifest": manifest,
        "signature": signing.sign(canonical_json(manifest), key),
        "public_key_pem": signing.public_key_pem(public),
    }


def export_to_file(
    *, actor: Any, format: str, filters: dict[str, Any], out, manifest_out
) -> Export:
    """Create an export and write it and its manifest (the ``export_ledger`` command)."""
    import json

    export = export_create(actor=actor, format=format, filters=filters)
    for chunk in export_stream(export):
        out.write(chunk)
    out.flush()
    export.refresh_from_db()
    manifest_out.write(json.dumps(export.manifest, indent=2, sort_keys=True) + "\n")
    return export
