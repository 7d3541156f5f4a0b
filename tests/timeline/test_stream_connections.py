"""200 open timeline streams under uvicorn hold a bounded number of PostgreSQL connections,
still deliver a new item to every one of them, and a user's 11th stream is refused (issue 16,
finding 4: 20 streams took 20 connections, about 100 tabs exhausted the server)."""

from __future__ import annotations

import select
import socket
import time

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.utils import timezone

from tests.asgi_server import serve_asgi
from tests.timeline.test_timeline import estate, make_rollback  # noqa: F401 - fixtures
from timeline import views
from timeline.models import Event

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
STREAMS, USERS = 200, 20


def _connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _open(port: int, url: str, session: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid={session}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def _read_until(socks, marker: bytes, timeout: float) -> dict[socket.socket, bytes]:
    """What each socket received, reading until each has shown ``marker`` (or time is up)."""
    got = dict.fromkeys(socks, b"")
    waiting = set(socks)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for sock in select.select(list(waiting), [], [], 0.2)[0]:
            got[sock] += sock.recv(65536)
            if marker in got[sock]:
                waiting.discard(sock)
    return got


@pytest.fixture
def sessions(estate, django_user_model):  # noqa: F811
    groups = [Group.objects.get(name=n) for n in ("operator", "team:payments")]
    cookies = []
    for i in range(USERS):
        user = django_user_model.objects.create_user(f"tab-{i}")
        user.groups.set(groups)
        client = Client()
        client.force_login(user)
        cookies.append(client.cookies["sessionid"].value)
    return cookies


def test_200_streams_hold_a_bounded_number_of_connections(estate, sessions, capsys):  # noqa: F811
    url = f"/rollbacks/{estate.pk}/timeline/stream?after=0.alert.0"
    baseline = _connections()
    socks = []
    try:
        with serve_asgi() as port:
            for i in range(STREAMS):
                socks.append(_open(port, url, sessions[i % USERS]))
            opened = _read_until(socks, b"retry: 1000", timeout=60)
            assert all(b"200 OK" in answer for answer in opened.values()), [
                a[:80] for a in opened.values() if b"200 OK" not in a
            ][:3]
            time.sleep(1.5)  # every stream has looked for items several times by now
            held = _connections() - baseline
            now = timezone.now()
            Event.objects.create(
                kind="deploy",
                source="ci",
                title="seen by all 200",
                rollback=estate,
                occurred_at=now,
                received_at=now,
            )
            started = time.monotonic()
            seen = _read_until(socks, b"seen by all 200", timeout=15)
            delivered = sum(b"seen by all 200" in answer for answer in seen.values())
            took = time.monotonic() - started
            extra = _open(port, url, sessions[0])  # an 11th for that user
            refused = _read_until([extra], b"\r\n\r\n", timeout=10)[extra]
            extra.close()
            for sock in socks:
                sock.close()
            time.sleep(0.5)  # the streams see their clients gone and end
    finally:
        for sock in socks:
            sock.close()
        views.close_stream_connections()
    with capsys.disabled():
        print(
            f"\n{STREAMS} streams: {held} database connections held beyond the "
            f"{baseline} before; a new item reached {delivered} in {took:.2f} s"
        )
    assert held <= views.STREAM_DB_THREADS + 1
    assert delivered == STREAMS
    assert refused.startswith(b"HTTP/1.1 429"), refused[:100]
