"""Fixtures of the engine tests that run against real targets."""

from __future__ import annotations

import uuid

import psycopg
import pytest

ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def orders_target(monkeypatch):
    """A second PostgreSQL database holding an ``orders`` table: the SQL target."""
    name = f"unwind_target_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgres://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id integer PRIMARY KEY, status text)")
        conn.execute("INSERT INTO orders VALUES (1, 'new'), (2, 'new'), (99, 'new')")
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", url)  # before the worker starts: it inherits it
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
