"""Loopback targets for the demo and the tests: a tiny HTTP server standing in for the
estate's services (health checks, undo endpoints, an Unleash-style flag admin API).

Every effect is recorded once per ``Idempotency-Key``: a repeated call with the same key is
answered with the first answer and changes nothing (what a well-behaved target does).
``GET /_effects`` lists the effects; ``POST /_fail/<path>`` makes a path answer 500
(transient) or 409 (permanent) from then on, for failure drills. A flag's environment
(``GET /flags/api/admin/projects/<p>/features/<f>/environments/<e>``, as Unleash answers it)
is enabled until it is turned off here: the demo's reconciliation checks read it.

Run: ``python -m demo.targets --port 9100``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TargetState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.effects: list[dict[str, Any]] = []
        self.by_key: dict[str, tuple[int, dict]] = {}
        self.failures: dict[str, int] = {}
        self.delays: dict[str, float] = {}
        self.calls: list[dict[str, Any]] = []


FLAG_OFF = re.compile(
    r"^/flags/api/admin/projects/([^/]+)/features/([^/]+)/environments/([^/]+)/off$"
)
FLAG_STATE = re.compile(
    r"^/flags/api/admin/projects/([^/]+)/features/([^/]+)/environments/([^/]+)$"
)


class Handler(BaseHTTPRequestHandler):
    server_version = "unwind-demo-target/1"
    state: TargetState

    def log_message(self, fmt: str, *args: Any) -> None:  # keep make run's output readable
        pass

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def do_GET(self) -> None:
        state = self.state
        if self.path == "/_effects":
            with state.lock:
                return self._send(200, {"effects": state.effects, "calls": state.calls})
        if self.path.endswith("/health"):
            status = state.failures.get(self.path)
            return self._send(status or 200, {"status": "down" if status else "ok"})
        flag = FLAG_STATE.match(self.path)
        if (
            flag
        ):  # Unleash's feature environment: on until turned off here (the demo run enabled it)
            with state.lock:
                is_off = any(
                    e.get("flag", {}).get("project") == flag[1]
                    and e["flag"]["feature"] == flag[2]
                    and e["flag"]["environment"] == flag[3]
                    for e in state.effects
                )
            return self._send(200, {"name": flag[3], "featureName": flag[2], "enabled": not is_off})
        return self._send(200, {"path": self.path})

    def do_POST(self) -> None:
        state = self.state
        body = self._body()
        if self.path.startswith("/_fail/"):
            target = "/" + self.path.removeprefix("/_fail/")
            with state.lock:
                if isinstance(body, dict) and body.get("status"):
                    state.failures[target] = int(body["status"])
                else:
                    state.failures.pop(target, None)
            return self._send(200, {"failing": dict(state.failures)})
        if self.path.startswith("/_delay/"):
            target = "/" + self.path.removeprefix("/_delay/")
            with state.lock:
                state.delays[target] = float((body or {}).get("seconds", 0))
            return self._send(200, {"delays": dict(state.delays)})
        if self.path == "/_reset":
            with state.lock:
                state.effects.clear()
                state.by_key.clear()
                state.failures.clear()
                state.delays.clear()
                state.calls.clear()
            return self._send(200, {})
        key = (self.headers.get("Idempotency-Key") or "").strip('"')
        with state.lock:
            state.calls.append(
                {"path": self.path, "key": key, "traceparent": self.headers.get("traceparent", "")}
            )
            delay = state.delays.get(self.path, 0.0)
            failure = state.failures.get(self.path)
        if delay:
            time.sleep(delay)
        if failure:
            return self._send(failure, {"error": f"{self.path} is failing with {failure}"})
        with state.lock:
            if key and key in state.by_key:
                status, answer = state.by_key[key]
                return self._send(status, answer | {"replayed": True})
            effect = {"path": self.path, "key": key, "body": body, "at": time.time()}
            flag = FLAG_OFF.match(self.path)
            if flag:
                effect["flag"] = {
                    "project": flag[1],
                    "feature": flag[2],
                    "environment": flag[3],
                    "enabled": False,
                }
            state.effects.append(effect)
            answer = {"ok": True, "effect": len(state.effects)}
            if key:
                state.by_key[key] = (200, answer)
        return self._send(200, answer)


def make_server(port: int, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, TargetState]:
    state = TargetState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, state


def serve(port: int, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, TargetState]:
    """Start a target server in a background thread; returns it and its state."""
    server, state = make_server(port, host)
    # A short poll interval so that shutdown() in test teardown returns at once.
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    server, _ = make_server(args.port)
    print(f"demo targets on http://127.0.0.1:{args.port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
