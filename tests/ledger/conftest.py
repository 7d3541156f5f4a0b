"""Fixtures for the ledger's tests: a signing key, a way to record entries, and the
superuser's way around the append-only triggers (PostgreSQL)."""

from __future__ import annotations

import contextlib

import pytest
from django.db import connection, transaction

from ledger import signing
from ledger.services import record

TEST_KEY = signing.generate_key_b64()


@pytest.fixture(autouse=True)
def signing_key(settings, tmp_path):
    """A configured key (pytest-django runs with DEBUG off, which refuses to sign without
    one) and a development key file that no test shares with the real var/."""
    settings.LEDGER_SIGNING_KEY = TEST_KEY
    settings.LEDGER_SIGNING_KEY_FILE = tmp_path / "ledger-signing.key"
    settings.LEDGER_TRUSTED_PUBLIC_KEYS = []
    return TEST_KEY


@pytest.fixture
def write():
    """``write(**fields)``: one entry recorded in its own transaction, like a service does."""

    def write(**fields):
        fields.setdefault("actor", "worker")
        fields.setdefault("action", "test.action")
        with transaction.atomic():
            return record(**fields)

    return write


@pytest.fixture
def ledger_rows(write):
    """Two rollbacks of three entries each and two global entries, interleaved."""
    entries = []
    for i in range(3):
        entries.append(write(action="step.attempt.succeeded", rollback_id=1, payload={"i": i}))
        entries.append(write(action="step.attempt.failed", rollback_id=2, outcome="failed"))
        if i < 2:
            entries.append(write(action="estate.imported", reason=f"import {i}"))
    return entries


@contextlib.contextmanager
def as_superuser_around_triggers():
    """What an attacker with superuser rights does: no trigger fires in this session
    (``session_replication_role = replica``). Yields a cursor."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            cursor.execute("SET session_replication_role = origin")
