"""Server time of the rollback page and its timeline fragment for a 1,000-step rollback, with
a ledger of about 1,000 entries and then of 100,000 (SPEC section 6: page p95 ≤ 150 ms,
fragment p95 ≤ 50 ms, p95 at 100k ≤ 1.5 × p95 at 1k, query counts constant).

    DEBUG=1 .venv/bin/python -m bench.page_bench [--entries 100000] [--requests 200]

Ledger: about 1,000 entries (the rollback's own history for 300 of its steps, 3 entries each),
then 100,000 (its history for all 1,000 steps, the rest in 10,000 other chains). On a throwaway PostgreSQL database (bench/_harness.py); no worker is needed. Requests go
through Django's test client in this process (every middleware, the session, the template):
what is timed is the server's work, without the network. settings.DEBUG is off while timing.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from datetime import timedelta

from bench._harness import Bench, machine, make_estate, percentile

SYSTEMS = [f"sys-{i}" for i in range(10)]
STEPS = 1000


def build_rollback(b: Bench):
    """10 systems in a chain of ``before`` edges (10 stages), one run of 1,000 forward
    actions (bulk-created, as bench/drain.py does), and its rollback planned by the engine."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from rollbacks import engine, runs
    from rollbacks.models import ForwardAction, System

    edges = [("before", a, b) for a, b in zip(SYSTEMS, SYSTEMS[1:], strict=False)]
    make_estate(SYSTEMS, edges=edges)
    operator = get_user_model().objects.create_user("bench-op", password="x")
    operator.groups.add(
        Group.objects.get(name="team:bench"), Group.objects.get_or_create(name="operator")[0]
    )
    t = time.perf_counter()
    run, _ = runs.run_register(
        process="bench", external_id="page", actor=operator, trace_id="ab" * 16
    )
    systems = list(System.objects.filter(slug__in=SYSTEMS).order_by("slug"))
    ForwardAction.objects.bulk_create(
        ForwardAction(
            run=run,
            sequence=i + 1,
            system=systems[i % len(systems)],
            action_type="undo",
            params={"i": i},
            idempotency_key=f"k{i}",
            trace_id=run.trace_id,
        )
        for i in range(STEPS)
    )
    runs.run_fail(run=run, reason="bench", actor=operator)
    rollback = engine.rollback_plan(run=run, actor=operator, reason="bench")
    b.log(f"run of {STEPS} actions planned in {time.perf_counter() - t:.1f} s")
    return operator, rollback


def grow_ledger(b: Bench, rollback, total: int, steps: int) -> None:
    """Bring the ledger to ``total`` entries: 3 for each of the first ``steps`` steps in the
    rollback's own chain (what running them records), and the rest in 10,000 other chains.
    Bulk-inserted: the hashes are no chain, only the page is measured here. Plus, once, five
    external events and an alert on the rollback."""
    from django.db import connection
    from django.utils import timezone

    from governance.models import Alert
    from ledger.models import Entry
    from timeline.models import Event

    now = timezone.now()
    have = Entry.objects.count()
    own = Entry.objects.filter(rollback_id=rollback.pk, seq__gte=1_000_000).count()
    step_ids = list(rollback.steps.order_by("id").values_list("id", flat=True))[:steps]
    actions = ("step.attempt.started", "step.attempt.finished", "step.succeeded")
    rows = [
        dict(
            chain=f"rollback:{rollback.pk}",
            seq=1_000_000 + n,
            rollback_id=rollback.pk,
            action=actions[n % 3],
            subject_type="step",
            subject_id=str(step_ids[n // 3]),
            at=now + timedelta(milliseconds=n),
            trace_id=rollback.trace_id,
        )
        for n in range(own, 3 * len(step_ids))
    ]
    base = Entry.objects.filter(seq__lt=1_000_000, rollback_id__gte=10_000_000).count()
    for n in range(base, base + max(0, total - have - len(rows))):
        rows.append(
            dict(
                chain=f"rollback:{10_000_000 + n % 10_000}",
                seq=n // 10_000 + 1,
                rollback_id=10_000_000 + n % 10_000,
                action="step.succeeded",
                subject_type="step",
                subject_id=str(50_000_000 + n),
                at=now - timedelta(seconds=n),
                trace_id=hashlib.md5(str(n % 10_000).encode()).hexdigest(),  # noqa: S324
            )
        )
    t = time.perf_counter()
    fixed = dict(prev_hash="0" * 64, hash="0" * 64, actor="worker", outcome="ok", payload={})
    for i in range(0, len(rows), 5000):
        Entry.objects.bulk_create(Entry(**fixed, **row) for row in rows[i : i + 5000])
    if not Event.objects.filter(rollback=rollback).exists():
        for i in range(5):
            Event.objects.create(
                kind="deploy",
                source="ci",
                title=f"deploy {i}",
                rollback=rollback,
                occurred_at=now,
                received_at=now + timedelta(seconds=i),
            )
        Alert.objects.create(
            group_key="g",
            fingerprint="f",
            status="firing",
            starts_at=now,
            labels={"alertname": "Errors", "system": SYSTEMS[0]},
            rollback=rollback,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    b.log(f"ledger now {Entry.objects.count():,} entries ({time.perf_counter() - t:.1f} s)")


def measure(client, url: str, n: int, status: int) -> tuple[float, float, int]:
    from django.db import connection

    for _ in range(5):
        client.get(url)
    queries = []

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
    return percentile(times, 50), percentile(times, 95), len(queries)


def measure_all(b: Bench, client, rollback, n: int) -> dict[str, tuple[float, float, int]]:
    from timeline import services

    items, _ = services.latest(services.Scope.of(rollback))
    newest, fifth = items[0].cursor, items[4].cursor
    base = f"/rollbacks/{rollback.pk}"
    results = {
        # Baseline: the smallest signed-in answer (the approvals badge: session, user, count).
        "baseline: /approvals/count": measure(client, "/approvals/count", n, 200),
        "page": measure(client, f"{base}/", n, 200),
        "page, steps 781-800": measure(client, f"{base}/?steps=40", n, 200),
        "page, one system": measure(client, f"{base}/?system={SYSTEMS[3]}", n, 200),
        "fragment, nothing new (204)": measure(client, f"{base}/timeline?after={newest}", n, 204),
        "fragment, 4 new items": measure(client, f"{base}/timeline?after={fifth}", n, 200),
    }
    for name, (p50, p95, queries) in results.items():
        b.log(f"  {name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, {queries} queries")
    return results


def explain(rollback) -> None:
    """EXPLAIN ANALYZE of the timeline's two queries: the page's and the fragment's."""
    from django.db import connection

    from timeline import services

    scope = services.Scope.of(rollback)
    newest = services.latest(scope)[0][0].cursor
    for name, qs in (
        ("page", services._union(scope, None, None, newest=True, limit=services.PAGE + 1)),
        ("fragment", services._union(scope, newest, None, newest=False, limit=services.PAGE)),
    ):
        sql, params = qs.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            print(f"--- {name}\n" + "\n".join(row[0] for row in cursor.fetchall()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--explain", action="store_true", help="print the timeline's plans")
    args = parser.parse_args()
    with Bench("page", limit_s=1800) as b:
        from django.conf import settings
        from django.test import Client

        from ledger.models import Entry

        operator, rollback = build_rollback(b)
        settings.DEBUG = False
        settings.ALLOWED_HOSTS = ["testserver"]
        client = Client()
        client.force_login(operator)
        grow_ledger(b, rollback, 1_000, steps=300)
        small_n = Entry.objects.count()
        b.log(f"measuring with {small_n:,} ledger entries")
        small = measure_all(b, client, rollback, args.requests)
        grow_ledger(b, rollback, args.entries, steps=STEPS)
        big_n = Entry.objects.count()
        b.log(f"measuring with {big_n:,} ledger entries")
        big = measure_all(b, client, rollback, args.requests)
        if args.explain:
            explain(rollback)
        print()
        print(f"machine: {machine()}")
        print(
            f"{STEPS}-step rollback in 10 stages; {args.requests} requests each, after 5 warm-ups"
        )
        base95 = big["baseline: /approvals/count"][1]
        print(
            f"| what | p50 / p95 at {small_n:,} | p50 / p95 at {big_n:,} | p95 {big_n:,} / "
            f"{small_n:,} | queries | p95 ÷ baseline p95 | target |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in small:
            s50, s95, sq = small[name]
            g50, g95, gq = big[name]
            target = 150 if name.startswith("page") else 50 if name.startswith("frag") else None
            if target is None:
                print(
                    f"| {name} | {s50:.1f} / {s95:.1f} ms | {g50:.1f} / {g95:.1f} ms | "
                    f"{g95 / s95:.2f} | {sq} → {gq} | |"
                )
                continue
            ok = "✓" if g95 <= target and g95 <= 1.5 * s95 and sq == gq else "✗"
            print(
                f"| {name} | {s50:.1f} / {s95:.1f} ms | {g50:.1f} / {g95:.1f} ms | "
                f"{g95 / s95:.2f} | {sq} → {gq} | {g95 / base95:.1f} | ≤ {target} ms, ≤ 1.5 {ok} |"
            )


if __name__ == "__main__":
    main()
