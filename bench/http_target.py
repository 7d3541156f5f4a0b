"""A loopback HTTP target for the I/O benchmarks, run in a process of its own (so that it
shares no GIL with the benchmark) on asyncio: hundreds of connections at once cost it a
coroutine each.

    python -m bench.http_target [--port 0] [--delay-ms 100]

Prints ``port <n>`` on its first line once it listens. Paths:

- ``POST /undo/<id>``: answers 200 after ``--delay-ms``. The effect is keyed by the
  ``Idempotency-Key`` header: the first request with a key applies it, later ones are
  answered as replays (``Idempotent-Replayed: true``), as a target that dedupes does.
  Every request is counted per key, so a benchmark can tell lost effects (a key it expected
  and the target never saw) from duplicates (a key sent more than once).
- ``POST /flaky/<id>``: the first request of each key answers 503 (a transient error), the
  next ones 200 after ``--delay-ms``: every step is retried once.
- ``POST /hang/<id>``: never answers; it waits until the client gives up and hangs up (a
  target that hangs until the step's timeout). Counted too.
- ``GET /stats``: JSON ``{"calls": {key: n}, "hang_calls": {key: n}, "first_call": {key:
  unix time}, "in_flight": n, "max_in_flight": n}``.
- ``POST /reset``: forget everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

STATE: dict = {}


def reset() -> None:
    STATE.update(calls={}, hang_calls={}, first_call={}, in_flight=0, max_in_flight=0)


async def _read_request(reader: asyncio.StreamReader):
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if length:
        await reader.readexactly(length)
    return method, path, headers


def _response(status: int, body: dict, extra: dict | None = None) -> bytes:
    data = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    head += ["Content-Type: application/json", f"Content-Length: {len(data)}", "", ""]
    return "\r\n".join(head).encode() + data


async def handle(reader, writer, delay_s: float) -> None:
    try:
        while (req := await _read_request(reader)) is not None:
            method, path, headers = req
            key = headers.get("idempotency-key", "").strip('"')
            if path.startswith("/undo/"):
                STATE["in_flight"] += 1
                STATE["max_in_flight"] = max(STATE["max_in_flight"], STATE["in_flight"])
                replayed = key in STATE["calls"]
                STATE["calls"][key] = STATE["calls"].get(key, 0) + 1
                STATE["first_call"].setdefault(key, time.time())
                try:
                    await asyncio.sleep(delay_s)
                finally:
                    STATE["in_flight"] -= 1
                extra = {"Idempotent-Replayed": "true"} if replayed else {}
                writer.write(_response(200, {"undone": path[6:], "replayed": replayed}, extra))
            elif path.startswith("/flaky/"):
                # The first request of each key fails (503, transient), the next succeeds:
                # every step is retried once, at its backoff.
                STATE["calls"][key] = STATE["calls"].get(key, 0) + 1
                STATE["first_call"].setdefault(key, time.time())
                if STATE["calls"][key] == 1:
                    writer.write(_response(503, {"error": "try again"}))
                else:
                    await asyncio.sleep(delay_s)
                    writer.write(_response(200, {"undone": path[7:]}))
            elif path.startswith("/hang/"):
                STATE["hang_calls"][key] = STATE["hang_calls"].get(key, 0) + 1
                await reader.read()  # until the client hangs up
                return
            elif path == "/stats":
                writer.write(_response(200, STATE))
            elif path == "/reset" and method == "POST":
                reset()
                writer.write(_response(200, {}))
            else:
                writer.write(_response(404, {"error": path}))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int, delay_s: float) -> None:
    reset()
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay_s), "127.0.0.1", port, backlog=4096
    )
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=100.0)
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
