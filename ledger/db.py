"""Database specifics of the ledger: the append-only triggers' one exception (``flush``),
and a check that the triggers are in place and enabled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pgtrigger
from django.db import connections

APPEND_ONLY_TABLES = ("ledger_entry", "ledger_checkpoint")
_TRUNCATE_TRIGGERS = (
    "ledger.Entry:ledger_entry_no_truncate",
    "ledger.Checkpoint:ledger_checkpoint_no_truncate",
)


def register_sqlite_functions(sender, connection, **kwargs) -> None:
    """``connection_created`` receiver: give SQLite connections ``ledger_flushing()``, which
    the DELETE triggers consult (ledger/migrations/0003_append_only.py)."""
    if connection.vendor != "sqlite":
        return
    connection.connection.create_function(
        "ledger_flushing", 0, lambda: 1 if getattr(connection, "ledger_flushing", False) else 0
    )


@contextlib.contextmanager
def allow_flush(using: str = "default") -> Iterator[None]:
    """Let ``manage.py flush`` empty the ledger tables: on PostgreSQL, only the TRUNCATE
    triggers are ignored (UPDATE and DELETE stay refused); on SQLite, the DELETE triggers."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with pgtrigger.ignore(*_TRUNCATE_TRIGGERS, databases=[using]):
            yield
    elif connection.vendor == "sqlite":
        connection.ensure_connection()
        connection.ledger_flushing = True
        try:
            yield
        finally:
            connection.ledger_flushing = False
    else:
        yield


def trigger_problems(using: str = "default") -> list[str]:
    """What is wrong with the append-only triggers: missing or disabled ones (for
    ``verify()`` to report as warnings)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE c.relname = ANY(%s) AND t.tgname LIKE 'pgtrigger_ledger_%%'",
                [list(APPEND_ONLY_TABLES)],
            )
            found = {
                (table, name.split("_", 1)[1].rsplit("_", 1)[0]): on
                for table, name, on in cursor.fetchall()
            }
            problems = []
            for table in APPEND_ONLY_TABLES:
                for kind in ("append_only", "no_truncate"):
                    name = f"{table}_{kind}"
                    state = found.get((table, name))
                    if state is None:
                        problems.append(f"trigger {name} is missing on {table}")
                    elif state == "D":
                        problems.append(f"trigger {name} is disabled on {table}")
            # ALTER TABLE … DISABLE TRIGGER ALL and session_replication_role = replica both
            # leave tgenabled as it is for the latter, so say which role this session has.
            cursor.execute("SHOW session_replication_role")
            role = cursor.fetchone()[0]
            if role != "origin":
                problems.append(f"session_replication_role is {role}: triggers do not fire")
            return problems
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            present = {row[0] for row in cursor.fetchall()}
            return [
                f"trigger {table}_{kind} is missing"
                for table in APPEND_ONLY_TABLES
                for kind in ("no_update", "no_delete")
                if f"{table}_{kind}" not in present
            ]
    return []
