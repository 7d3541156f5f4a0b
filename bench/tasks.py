"""Baseline Celery tasks for the benchmarks, loaded by the worker with ``-I bench.tasks``.

They carry the same options as ``rollbacks.tasks.run_step`` (ignore_result, max_retries=0,
acks_late; prefetch 1 from the settings) and touch only Redis, so they measure what a raw
Celery task costs on the same broker and the same worker.
"""

from __future__ import annotations

import os
import time

import redis

from config.celery import app

_redis: redis.Redis | None = None

HOPS_KEY = "bench:hops"  # list of time.time() stamps, one per hop of the raw chain
DRAIN_COUNT_KEY = "bench:drain:count"  # INCR per no-op task run
DRAIN_DONE_KEY = "bench:drain:done_at"  # time.time() when the count reached the target
READY_KEY = "bench:ready"


def r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _redis


@app.task(name="bench.tasks.ping", ignore_result=True, max_retries=0, acks_late=True)
def ping(*, token: str) -> None:
    """The worker is up and consuming: the harness waits for this key."""
    r().rpush(READY_KEY, f"{token}:{os.getpid()}")


@app.task(name="bench.tasks.hop", ignore_result=True, max_retries=0, acks_late=True)
def hop(*, i: int, n: int, key: str = HOPS_KEY) -> None:
    """One hop of a sequential chain: stamp the time, then send the next hop."""
    r().rpush(key, repr(time.time()))
    if i + 1 < n:
        app.send_task("bench.tasks.hop", kwargs={"i": i + 1, "n": n, "key": key})


@app.task(name="bench.tasks.noop", ignore_result=True, max_retries=0, acks_late=True)
def noop(*, target: int) -> None:
    """A no-op that counts itself; the one that reaches ``target`` stamps the time."""
    if r().incr(DRAIN_COUNT_KEY) == target:
        r().set(DRAIN_DONE_KEY, repr(time.time()))


HTTP_COUNT_KEY = "bench:http:count"  # INCR per HTTP baseline task run
HTTP_DONE_KEY = "bench:http:done_at"  # time.time() when the count reached the target


@app.task(name="bench.tasks.http_call", ignore_result=True, max_retries=0, acks_late=True)
def http_call(*, url: str, key: str, target: int) -> None:
    """What a step's compensation does at its core, without Unwind: one POST with an
    ``Idempotency-Key`` (httpx, a new connection, as the http executor does), then count."""
    import httpx

    httpx.post(url, headers={"Idempotency-Key": f'"{key}"'}, timeout=30).raise_for_status()
    if r().incr(HTTP_COUNT_KEY) == target:
        r().set(HTTP_DONE_KEY, repr(time.time()))
