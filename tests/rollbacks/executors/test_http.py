"""The HTTP executor against a real loopback target (demo/targets.py)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from rollbacks.executors import ExecutorError, executor_for

from .conftest import TRACEPARENT


@pytest.fixture
def recording_target():
    """The demo target, also keeping each POST's raw headers (it strips the key's quotes)."""
    from demo.targets import make_server

    server, state = make_server(0)
    state.headers = []

    class Recording(server.RequestHandlerClass):
        def do_POST(self) -> None:
            with state.lock:
                state.headers.append({n.lower(): self.headers.get_all(n) for n in self.headers})
            super().do_POST()

    server.RequestHandlerClass = Recording
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_idempotency_key_arrives_quoted_and_identical_on_every_attempt(recording_target, make_work):
    base, state = recording_target
    work = make_work(
        "http",
        {
            "url": f"{base}/orders-api/orders/7/cancel",
            # a contract's headers are sent, but cannot replace the key or the trace context
            "headers": {"X-Reason": "incident 42", "idempotency-key": "forged"},
        },
        idempotency_key="rb-1-step-2",
    )
    executor_for("http").execute(work)
    executor_for("http").execute(work)

    # exactly one of each header per request, the same on both attempts
    assert [h["idempotency-key"] for h in state.headers] == [['"rb-1-step-2"']] * 2
    assert [h["traceparent"] for h in state.headers] == [[TRACEPARENT]] * 2
    assert state.headers[0]["x-reason"] == ["incident 42"]


def test_second_attempt_with_the_same_key_has_one_effect(target_server, make_work):
    base, state = target_server
    work = make_work(
        "http", {"url": f"{base}/orders-api/orders/7/cancel", "body": {"reason": "rollback 1"}}
    )
    first = executor_for("http").execute(work)
    second = executor_for("http").execute(work)

    assert len(state.effects) == 1
    assert state.effects[0]["body"] == {"reason": "rollback 1"}
    assert [c["traceparent"] for c in state.calls] == [TRACEPARENT, TRACEPARENT]
    assert first.output | {"body": None} == {
        "method": "POST",
        "url": f"{base}/orders-api/orders/7/cancel",
        "status": 200,
        "replayed": False,
        "body": None,
    }
    assert second.output["status"] == 200 and second.output["replayed"] is True


def test_a_new_key_is_a_new_effect(target_server, make_work):
    base, state = target_server
    spec = {"url": f"{base}/svc/undo"}
    executor_for("http").execute(make_work("http", spec, idempotency_key="a"))
    executor_for("http").execute(make_work("http", spec, idempotency_key="b"))
    assert [e["key"] for e in state.effects] == ["a", "b"]


@pytest.mark.parametrize(
    "status, is_permanent",
    [(500, False), (503, False), (408, False), (429, False), (409, True), (400, True)],
)
def test_failed_status_is_transient_or_permanent(target_server, make_work, status, is_permanent):
    base, state = target_server
    state.failures["/svc/undo"] = status
    with pytest.raises(ExecutorError) as caught:
        executor_for("http").execute(make_work("http", {"url": f"{base}/svc/undo"}))
    assert caught.value.permanent is is_permanent
    assert caught.value.message.startswith(f"POST {base}/svc/undo: {status} ")
    assert state.effects == []


def test_expect_status_replaces_2xx(target_server, make_work):
    base, _ = target_server
    url = f"{base}/orders-api/orders/7"
    ok = executor_for("http").execute(
        make_work("http", {"method": "GET", "url": url, "expect_status": [200, 404]})
    )
    assert ok.output["status"] == 200
    with pytest.raises(ExecutorError) as caught:
        executor_for("http").execute(
            make_work("http", {"method": "GET", "url": url, "expect_status": [404]})
        )
    assert caught.value.permanent and f"GET {url}: 200" in caught.value.message


def test_connection_refused_is_transient(make_work):
    url = f"http://127.0.0.1:{_closed_port()}/svc/undo"
    with pytest.raises(ExecutorError) as caught:
        executor_for("http").execute(make_work("http", {"url": url}))
    assert not caught.value.permanent
    assert caught.value.message.startswith(f"POST {url}: ConnectError")


def test_slow_target_times_out_transiently(target_server, make_work):
    base, state = target_server
    state.delays["/slow/undo"] = 2
    started = time.monotonic()
    with pytest.raises(ExecutorError) as caught:
        executor_for("http").execute(make_work("http", {"url": f"{base}/slow/undo"}, timeout_s=0.5))
    assert not caught.value.permanent
    assert caught.value.message == f"POST {base}/slow/undo: timed out after 0.5s (ReadTimeout)"
    # Let the target finish its late answer (a broken pipe) while this test still owns stderr.
    time.sleep(max(0.0, started + 2.2 - time.monotonic()))


@pytest.mark.parametrize("path", ["/things/../cancel", "/things/./cancel", "/things/%2E%2e/cancel"])
def test_a_url_with_a_dot_segment_is_refused_before_any_call(target_server, make_work, path):
    """httpx resolves dot segments (``/things/../cancel`` goes out as ``/cancel``): a
    permanent error, and the target hears nothing (issue 16, finding 5)."""
    base, state = target_server
    with pytest.raises(ExecutorError, match="segment") as caught:
        executor_for("http").execute(make_work("http", {"url": f"{base}{path}"}))
    assert caught.value.permanent is True
    assert state.calls == []
