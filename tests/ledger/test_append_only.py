"""Append-only in the database: UPDATE, DELETE and TRUNCATE are refused by triggers that a
migration creates, whatever the client (the ORM or raw SQL)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from ledger.checkpoints import checkpoint_take
from ledger.models import Checkpoint, Entry
from ledger.verification import verify

from .conftest import as_superuser_around_triggers

pytestmark = pytest.mark.django_db

REFUSED = "the ledger is append-only"


def _refused(sql: str) -> str:
    with pytest.raises(DatabaseError) as caught, transaction.atomic(), connection.cursor() as c:
        c.execute(sql)
    return str(caught.value)


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["ledger_entry", "ledger_checkpoint"])
@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE {table} SET hash = 'x'", "UPDATE"),
        ("DELETE FROM {table}", "DELETE"),
        ("TRUNCATE {table}", "TRUNCATE"),
        ("TRUNCATE {table} CASCADE", "TRUNCATE"),
    ],
)
def test_postgresql_refuses_every_change_to_the_ledger_tables(
    ledger_rows, table, statement, operation
):
    checkpoint_take()
    message = _refused(statement.format(table=table))
    assert f"{REFUSED}: {operation} on {table} is refused" in message
    assert Entry.objects.count() == len(ledger_rows) and Checkpoint.objects.count() == 1


@pytest.mark.parametrize("table", ["ledger_entry", "ledger_checkpoint"])
@pytest.mark.parametrize("statement", ["UPDATE {table} SET hash = 'x'", "DELETE FROM {table}"])
def test_every_database_refuses_update_and_delete(ledger_rows, table, statement):
    checkpoint_take()
    assert REFUSED in _refused(statement.format(table=table))


def test_the_orm_cannot_change_or_delete_an_entry(ledger_rows):
    entry = ledger_rows[0]
    entry.reason = "rewritten"
    with pytest.raises(DatabaseError, match=REFUSED), transaction.atomic():
        entry.save()
    with pytest.raises(DatabaseError, match=REFUSED), transaction.atomic():
        Entry.objects.filter(pk=entry.pk).delete()
    with pytest.raises(DatabaseError, match=REFUSED), transaction.atomic():
        Entry.objects.update(outcome="ok")
    assert verify().is_ok


def test_flush_empties_the_database_ledger_included(ledger_rows):
    """The one exception, for `manage.py flush` and the teardown of transaction=True tests."""
    checkpoint_take()
    call_command("flush", interactive=False, verbosity=0)
    assert not Entry.objects.exists() and not Checkpoint.objects.exists()


@pytest.mark.postgres
def test_only_the_flush_command_passes_the_truncate_trigger(ledger_rows):
    import pgtrigger

    assert REFUSED in _refused("DELETE FROM ledger_entry")  # not let through by flush's rule
    with pgtrigger.ignore("ledger.Entry:ledger_entry_no_truncate"):
        assert REFUSED in _refused("DELETE FROM ledger_entry")


def test_verify_warns_when_the_triggers_are_missing_or_off(ledger_rows):
    assert verify().warnings == []
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("ALTER TABLE ledger_entry DISABLE TRIGGER ALL")
            warnings = verify().warnings
            transaction.set_rollback(True)
        assert "trigger ledger_entry_append_only is disabled on ledger_entry" in warnings
        with transaction.atomic(), as_superuser_around_triggers():
            assert "session_replication_role is replica: triggers do not fire" in verify().warnings
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER ledger_entry_no_delete")
            warnings = verify().warnings
            transaction.set_rollback(True)
        assert warnings == ["trigger ledger_entry_no_delete is missing"]
