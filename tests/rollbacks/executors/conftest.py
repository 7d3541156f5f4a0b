"""Fixtures for executor tests: a StepWork factory and real target databases.

PostgreSQL targets get a database of their own per test module (created on the server
``DATABASE_URL`` points at, dropped at teardown), so they never touch Unwind's own tables.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse

import psycopg
import pytest
from psycopg import sql

from rollbacks.executors import StepWork

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
HAS_POSTGRES = os.environ.get("DATABASE_URL", "").startswith("postgres")
POSTGRES = pytest.param(
    "postgres",
    marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not HAS_POSTGRES, reason="needs DATABASE_URL=postgres://…"),
    ],
)


@pytest.fixture
def make_work():
    def make(kind: str, spec: dict, **overrides) -> StepWork:
        fields = {"idempotency_key": "step-1-attempt-independent", "timeout_s": 5.0}
        fields["traceparent"] = TRACEPARENT
        return StepWork(kind=kind, spec={"kind": kind} | spec, **(fields | overrides))

    return make


def _server_url(dbname: str) -> str:
    """``DATABASE_URL`` with its database name replaced."""
    parts = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
    return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="module")
def postgres_target_url():
    """A throwaway PostgreSQL database for this module's target tables."""
    name = f"unwind_target_test_{secrets.token_hex(4)}"
    with psycopg.connect(_server_url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _server_url(name)
    with psycopg.connect(_server_url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", POSTGRES])
def orders_db(request, tmp_path, monkeypatch):
    """Target database ``orders`` (SQLite file or PostgreSQL) with a table ``orders``.

    Yields a function returning the current rows as ``{id: (status, total, note)}``.
    """
    from rollbacks.targets import connect

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/orders.sqlite3"
    else:
        url = request.getfixturevalue("postgres_target_url")
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", url)
    conn = connect("orders")
    conn.execute(
        "CREATE TABLE orders (id integer PRIMARY KEY, status text NOT NULL, total integer,"
        " note text)"
    )
    conn.execute(
        "INSERT INTO orders (id, status, total, note) VALUES"
        " (1, 'paid', 100, NULL), (2, 'refunded', 0, NULL), (3, 'new', 40, 'gift')"
    )
    conn.commit()

    def rows() -> dict[int, tuple]:
        conn.rollback()  # a fresh snapshot on PostgreSQL
        cursor = conn.execute("SELECT id, status, total, note FROM orders ORDER BY id")
        return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}

    rows.conn = conn
    yield rows
    conn.rollback()
    conn.execute("DROP TABLE IF EXISTS orders")
    conn.execute("DROP TABLE IF EXISTS unwind_idempotency")
    conn.commit()
    conn.close()
