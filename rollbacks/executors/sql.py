"""SQL compensations on a named target database, exactly once per step.

Exactly-once (SPEC §3, invariant 2) comes from the target itself: the step's idempotency
key is inserted into ``unwind_idempotency`` *in the same transaction* as the compensation.
Either both commit or neither does, so an attempt that finds its key already there knows
the effect happened (a worker died after COMMIT, before recording it) and changes nothing.

``sql`` runs the contract's statement with its params (``%(name)s`` placeholders; turned
into ``:name`` for SQLite). ``sql_restore`` puts one row back to its before-image, but only
if the row still equals the after-image the forward action left (compare-and-set): a row
someone changed since is never overwritten, that needs a human.

Works on PostgreSQL (psycopg 3) and SQLite. Driver errors are classified: a lost or
refused connection, a lock, a serialization failure may pass (transient); syntax,
missing tables, constraint violations will not (permanent).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors

from rollbacks import targets

from .base import ExecutorError, Outcome, StepWork

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
# sqlite3 reports every error as OperationalError & co.; its error name tells them apart.
_SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN")
# Two concurrent CREATE TABLE IF NOT EXISTS on PostgreSQL: the loser gets one of these.
_CREATED_CONCURRENTLY = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.DuplicateObject,
    psycopg.errors.DuplicateTable,
)


def _identifier(name: str) -> str:
    """A table or column name, checked then quoted: it becomes SQL text, not a parameter.

    Quoted identifiers are case-sensitive on PostgreSQL: write them as the table has them.
    """
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ExecutorError(f"{name!r} is not a valid table or column name", permanent=True)
    return f'"{name}"'


class _Target:
    """One connection to a named target, hiding the two drivers' differences."""

    def __init__(self, name: str, timeout_s: float) -> None:
        try:
            self.conn: Any = targets.connect(name)
        except LookupError as exc:
            raise ExecutorError(str(exc), permanent=True) from exc
        # Waiting on a lock or a statement past the step's timeout fails the attempt.
        self.timeout_ms = max(1, int(timeout_s * 1000))
        self.is_sqlite = isinstance(self.conn, sqlite3.Connection)
        if self.is_sqlite:
            self.conn.isolation_level = None  # we say BEGIN ourselves (below)
            self.conn.execute(f"PRAGMA busy_timeout = {self.timeout_ms}")
        # NULL-safe equality, for comparing a row with an image that holds NULLs.
        self.same = "IS" if self.is_sqlite else "IS NOT DISTINCT FROM"

    def run(self, sql: str, params: dict[str, Any]) -> Any:
        if self.is_sqlite:
            sql = _PLACEHOLDER.sub(lambda m: f":{m[1]}" if m[1] else "%", sql)
        return self.conn.execute(sql, params)

    def ensure_idempotency_table(self) -> None:
        # Committed on its own, before the compensation's transaction: an attempt that loses
        # the race to create it gets an error, which would otherwise abort that transaction.
        try:
            self.run(
                "CREATE TABLE IF NOT EXISTS unwind_idempotency"
                " (key text PRIMARY KEY, applied_at text NOT NULL)",
                {},
            )
            self.conn.commit()
        except _CREATED_CONCURRENTLY:  # PostgreSQL: another attempt created it just now
            self.conn.rollback()

    def begin(self) -> None:
        # SQLite takes the write lock now, so two attempts serialise here rather than
        # deadlocking when both upgrade a read lock. psycopg opens the transaction itself;
        # the timeout is local to it.
        if self.is_sqlite:
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            ms = str(self.timeout_ms)
            self.run("SELECT set_config('statement_timeout', %(ms)s, true)", {"ms": ms})

    def claim(self, key: str) -> bool:
        """Record the key in the open transaction; False when it was recorded before."""
        cursor = self.run(
            "INSERT INTO unwind_idempotency (key, applied_at) VALUES (%(key)s, %(at)s)"
            " ON CONFLICT (key) DO NOTHING",
            {"key": key, "at": datetime.now(UTC).isoformat()},
        )
        return cursor.rowcount == 1


def _driver_error(database: str, exc: Exception) -> ExecutorError:
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        is_transient = True  # connection lost or refused, lock timeout, serialization failure
    elif isinstance(exc, sqlite3.Error):
        is_transient = getattr(exc, "sqlite_errorname", "").startswith(_SQLITE_TRANSIENT)
    else:
        is_transient = False
    message = " ".join(str(exc).split())
    return ExecutorError(f"{database}: {type(exc).__name__}: {message}", permanent=not is_transient)


def _in_transaction(work: StepWork, apply: Callable[[_Target], dict[str, Any]]) -> Outcome:
    """Run ``apply`` exactly once per idempotency key.

    1. Connect; create ``unwind_idempotency`` if missing (committed on its own).
    2. Begin (bounded by the step's timeout); insert the key. If it is already there, the
       effect happened: return ``replayed`` without running anything.
    3. Run ``apply``; commit it together with the key.

    On any error the connection is closed without COMMIT, which rolls back the key with
    the rest: a failed attempt leaves nothing behind and the next one starts clean.
    """
    database = work.spec["database"]
    db = None
    try:
        db = _Target(database, work.timeout_s)
        db.ensure_idempotency_table()
        db.begin()
        if not db.claim(work.idempotency_key):
            return Outcome({"database": database, "replayed": True})
        output = {"database": database, "replayed": False} | apply(db)
        db.conn.commit()
        return Outcome(output)
    except (psycopg.Error, sqlite3.Error) as exc:
        raise _driver_error(database, exc) from exc
    finally:
        if db is not None:
            db.conn.close()


def _unexpected_rows(rows: int, expect: int | dict | None) -> str:
    """Why ``rows`` is not what the contract's ``expect_rows`` says ('' when it is)."""
    if expect is None:
        return ""
    low, high = (
        (expect, expect) if isinstance(expect, int) else (expect.get("min"), expect.get("max"))
    )
    if (low is not None and rows < low) or (high is not None and rows > high):
        wanted = (
            f"{low}" if low == high else f"between {low or 0} and {'any' if high is None else high}"
        )
        return f"the statement changed {rows} row(s), the contract expects {wanted} (expect_rows)"
    return ""


class SqlExecutor:
    """``kind: sql`` — ``database``, ``statement`` with ``%(name)s`` placeholders, ``params``."""

    def execute(self, work: StepWork) -> Outcome:
        def apply(db: _Target) -> dict[str, Any]:
            cursor = db.run(work.spec["statement"], work.spec.get("params") or {})
            if problem := _unexpected_rows(cursor.rowcount, work.spec.get("expect_rows")):
                # Raised inside the transaction: the statement and the key roll back together.
                raise ExecutorError(f"{work.spec['database']}: {problem}", permanent=True)
            return {"rows": cursor.rowcount}

        return _in_transaction(work, apply)


class SqlRestoreExecutor:
    """``kind: sql_restore`` — ``database``, ``table``, ``key`` (column → value).

    Puts the row back to ``work.before``; when there is no before-image the forward action
    inserted the row, so restoring means deleting it. Both only WHERE the row still
    equals ``work.after``. Key columns are compared with ``=`` (so an index can serve it):
    a key value is never NULL.
    """

    def execute(self, work: StepWork) -> Outcome:
        return _in_transaction(work, lambda db: _restore(db, work))


def _restore(db: _Target, work: StepWork) -> dict[str, Any]:
    table, key, before, after = work.spec["table"], work.spec["key"], work.before, work.after
    described = f"row {table} {key}"
    if not after:
        raise ExecutorError(
            f"{described}: no after-image, so no way to tell whether the row changed since"
            " the forward action: refusing to restore blindly",
            permanent=True,
        )
    params: dict[str, Any] = {}

    def terms(image: dict[str, Any], op: str, prefix: str) -> list[str]:
        out = []
        for i, (column, value) in enumerate(image.items()):
            params[f"{prefix}{i}"] = value
            out.append(f"{_identifier(column)} {op} %({prefix}{i})s")
        return out

    quoted = _identifier(table)
    where_key = terms(key, "=", "k")
    where = " AND ".join(where_key + terms(after, db.same, "a"))
    if before:
        sets = ", ".join(terms(before, "=", "b"))
        rows = db.run(f"UPDATE {quoted} SET {sets} WHERE {where}", params).rowcount
    else:
        rows = db.run(f"DELETE FROM {quoted} WHERE {where}", params).rowcount
    if rows == 1:
        return {"table": table, "rows": 1}
    if rows > 1:
        raise ExecutorError(f"{described}: the key matches {rows} rows, not one", permanent=True)

    # Nothing matched the after-image: already restored (by an earlier attempt whose key
    # was lost, or by hand), or changed by someone else, which we must not overwrite.
    if before:
        check = " AND ".join(where_key + terms(before, db.same, "c"))
    else:
        check = " AND ".join(where_key)
    (count,) = db.run(f"SELECT count(*) FROM {quoted} WHERE {check}", params).fetchone()
    if count == (1 if before else 0):
        return {"table": table, "rows": 0, "replayed": True, "detail": "already restored"}
    raise ExecutorError(
        f"{described} changed since it was captured: refusing to overwrite", permanent=True
    )


def read_rows(
    database: str, query: str, params: dict[str, Any], *, timeout_s: float, limit: int
) -> tuple[list[str], list[tuple], bool]:
    """Run one read-only query on a named target: (column names, up to ``limit`` rows,
    whether there were more). The transaction is read-only (PostgreSQL ``READ ONLY``,
    SQLite ``query_only``) and bounded by ``timeout_s``; it is never committed. Used by
    reconciliation checks (reconcile/checks.py); errors are classified as for compensations."""
    db = None
    try:
        db = _Target(database, timeout_s)
        if db.is_sqlite:
            db.conn.execute("PRAGMA query_only = ON")
            db.conn.execute("BEGIN")
        else:
            db.run("SET TRANSACTION READ ONLY", {})
            db.begin()
        cursor = db.run(query, params)
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(limit + 1)
        return columns, [tuple(r) for r in rows[:limit]], len(rows) > limit
    except (psycopg.Error, sqlite3.Error) as exc:
        raise _driver_error(database, exc) from exc
    finally:
        if db is not None:
            with contextlib.suppress(Exception):  # closing without COMMIT discards anyway
                db.conn.rollback()
            db.conn.close()
