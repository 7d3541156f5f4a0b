"""Named target databases that SQL compensations and health checks run against.

Configured with ``TARGET_DATABASE_<NAME>=<database URL>`` (``TARGET_DATABASE_ORDERS=postgres://…``);
the name is lowercased (``orders``). Kept apart from Django's own databases: Unwind never
migrates or routes models to them.
"""

from __future__ import annotations

import os
import sqlite3
import time

import dj_database_url

PREFIX = "TARGET_DATABASE_"


def target_urls() -> dict[str, str]:
    return {k[len(PREFIX) :].lower(): v for k, v in os.environ.items() if k.startswith(PREFIX)}


def connect(name: str):
    """A new DB-API connection to the named target (psycopg for PostgreSQL, sqlite3 otherwise)."""
    url = target_urls().get(name)
    if url is None:
        raise LookupError(f"no target database named {name!r} (set {PREFIX}{name.upper()})")
    cfg = dj_database_url.parse(url)
    if cfg["ENGINE"].endswith("postgresql"):
        import psycopg

        return psycopg.connect(
            dbname=cfg["NAME"],
            user=cfg.get("USER") or None,
            password=cfg.get("PASSWORD") or None,
            host=cfg.get("HOST") or None,
            port=cfg.get("PORT") or None,
            connect_timeout=5,
        )
    if cfg["ENGINE"].endswith("sqlite3"):
        return sqlite3.connect(cfg["NAME"], timeout=10)
    raise LookupError(f"target database {name!r}: only PostgreSQL and SQLite are supported")


def ping_target_database(name: str) -> tuple[str, int | None, str]:
    started = time.monotonic()
    try:
        conn = connect(name)
        try:
            conn.execute("SELECT 1")
        finally:
            conn.close()
    except LookupError as exc:
        return "unknown", None, str(exc)
    except Exception as exc:  # any driver error means the target is down for us
        return "red", None, f"{type(exc).__name__}: {exc}"[:300]
    latency = int((time.monotonic() - started) * 1000)
    return "green", latency, f"SELECT 1 in {latency} ms"
