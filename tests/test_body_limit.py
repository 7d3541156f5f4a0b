"""Request bodies over MAX_BODY_BYTES are refused under uvicorn before Django's handler reads
(and spools) them: by the declared Content-Length, and by counting a chunked body's bytes.
Driven with a raw socket, as an attacker would (issue 16, finding 3)."""

from __future__ import annotations

import contextlib
import select
import socket
import time

import pytest

from tests.asgi_server import serve_asgi

LIMIT = 64 * 1024
MIB = 1024 * 1024


@pytest.fixture
def port(settings, tmp_path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path)  # where Django would spool a large body
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = LIMIT
    with serve_asgi() as port:
        yield port
    assert list(tmp_path.iterdir()) == []  # nothing was spooled


def _answer(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.endswith(b"}"):
                break
    return data


def _send_until_answered(sock: socket.socket, chunks, cap: int) -> int:
    """Send chunks until the server answers (or ``cap`` bytes went out); the bytes sent."""
    sent = 0
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
        if sent >= cap:
            break
    return sent


def test_a_declared_300_mib_body_is_refused_before_it_is_sent(port):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (300 * MIB)
        )
        started = time.monotonic()
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5  # answered without waiting for the body
    assert b'"limit_bytes": 65536' in answer and b"larger than the limit" in answer


def test_a_chunked_body_is_refused_once_it_passes_the_limit(port):
    """No Content-Length: the bytes are counted as they arrive. The answer comes while the
    client is still sending, long before 64 MiB have gone out (the old code read it all)."""
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent = _send_until_answered(sock, iter(lambda: chunk, None), cap=64 * MIB)
        if sent >= 64 * MIB:
            sock.sendall(b"0\r\n\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * MIB, f"{sent} bytes went out before the answer"


def test_a_body_under_the_limit_reaches_django(port):
    body = b'{"kind": "note"}'
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # Django answered: no token
