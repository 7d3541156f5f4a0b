"""Where a step's time goes, in-process (no worker): queries per step and their cost.

    DEBUG=1 .venv/bin/python -m bench.profile_step [--n 30] [--cprofile]

Plans and starts one rollback of N stages of one no-op step (as bench.step_overhead does),
then runs each step with ``engine.step_run`` in this process, the way a Celery worker task
would: the database connection is closed before each step (Celery's Django fix-up closes
it before and after every task) and the outbox's on-commit publish really sends to Redis
db 13 (nobody consumes it; the database is dropped at the end). For each step it counts
the queries (``django.db.connection.queries``), sums their time, and times the connect.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections import Counter

from bench._harness import Bench, machine, make_estate, percentile


def classify(sql: str) -> str:
    head = sql.split(" ", 1)[0].upper()
    for table in (
        "ledger_entry",
        "rollbacks_attempt",
        "rollbacks_outbox",
        "rollbacks_stage",
        "rollbacks_step",
        "rollbacks_rollback",
        "rollbacks_system",
        "rollbacks_forwardaction",
    ):
        if f'"{table}"' in sql.split(" WHERE ")[0] or (head == "INSERT" and table in sql[:60]):
            return f"{head} {table}"
    return head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--cprofile", action="store_true", help="print the top functions too")
    ap.add_argument("--show-sql", action="store_true", help="print the queries of one step")
    ap.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, cumulative)")
    ap.add_argument(
        "--keep-connection",
        action="store_true",
        help="do not close the connection between steps (what CELERY_DB_REUSE_MAX would give)",
    )
    args = ap.parse_args(argv)
    n = args.n

    with Bench("profile_step", limit_s=240):
        from django.db import connection, reset_queries

        from bench.step_overhead import report_run
        from rollbacks import engine
        from rollbacks.models import Rollback, Step

        slugs = [f"s{i:03d}" for i in range(n)]
        admin = make_estate(
            slugs, edges=[("before", a, c) for a, c in zip(slugs, slugs[1:], strict=False)]
        )
        run = report_run(admin, slugs, "profile")
        rollback = engine.rollback_plan(run=run, actor=admin, reason="bench: profile")
        engine.rollback_start(rollback=rollback, actor=admin)

        # CPU time, not wall: what this process spends, without the waits on the servers.
        prof = cProfile.Profile(time.process_time) if args.cprofile else None
        cpus, walls, connects, counts, db_ms, kinds, kind_ms = (
            [],
            [],
            [],
            [],
            [],
            Counter(),
            Counter(),
        )
        for k in range(n):
            step = (
                Step.objects.filter(rollback=rollback, state=Step.State.PENDING)
                .order_by("stage__index")
                .first()
            )
            if not args.keep_connection:
                connection.close()  # what Celery's fix-up does around every task
            reset_queries()
            t0 = time.perf_counter()
            connection.ensure_connection()
            t1, c1 = time.perf_counter(), time.process_time()
            if prof:
                prof.enable()
            verdict = engine.step_run(step_id=step.pk, worker="profile")
            if prof:
                prof.disable()
            t2, c2 = time.perf_counter(), time.process_time()
            if verdict != "succeeded":
                raise RuntimeError(f"step {step.pk}: {verdict}")
            qs = list(connection.queries)
            if args.show_sql and k == n // 2:
                print(f"--- the {len(qs)} queries of step {k} (ms, SQL) ---")
                for q in qs:
                    print(f"{float(q['time']) * 1000:6.2f}  {q['sql'][:150]}")
            if k == 0:
                continue  # first one pays for imports
            connects.append((t1 - t0) * 1000)
            walls.append((t2 - t1) * 1000)
            cpus.append((c2 - c1) * 1000)
            counts.append(len(qs))
            db_ms.append(sum(float(q["time"]) for q in qs) * 1000)
            kinds.update(classify(q["sql"]) for q in qs)
            for q in qs:
                kind_ms[classify(q["sql"])] += float(q["time"]) * 1000
        rollback.refresh_from_db()
        steps = len(walls)
        print()
        print(
            f"profile_step  N={n} (first step not counted)  rollback ended {rollback.state}  "
            f"{'connection kept' if args.keep_connection else 'connection closed before each step'}"
        )
        print(f"  machine: {machine()}")
        print(
            f"  connect (new PostgreSQL connection per task): p50 {percentile(connects, 50):.2f} ms  mean {statistics.mean(connects):.2f}"
        )
        print(
            f"  step_run wall (claim+execute+record+advance+publish): p50 {percentile(walls, 50):.2f} ms  mean {statistics.mean(walls):.2f}"
        )
        print(
            f"  Python CPU in this process per step: p50 {percentile(cpus, 50):.2f} ms  "
            f"mean {statistics.mean(cpus):.2f}  (the rest of the wall is waiting on PostgreSQL/Redis)"
        )
        print(
            f"  queries per step: {statistics.mean(counts):.1f} (min {min(counts)}, max {max(counts)})"
        )
        print(
            f"  time in queries per step: p50 {percentile(db_ms, 50):.2f} ms  mean {statistics.mean(db_ms):.2f}  "
            f"= {statistics.mean(db_ms) / statistics.mean(counts):.2f} ms/query"
        )
        print("  queries per step by kind (count, ms per step, ms per query):")
        for kind, c in sorted(kinds.items(), key=lambda kv: -kind_ms[kv[0]]):
            print(
                f"    {c / steps:5.2f}  {kind_ms[kind] / steps:6.2f} ms  {kind_ms[kind] / c:5.2f} ms/q  {kind}"
            )
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(40)
            print(out.getvalue())
        if rollback.state != Rollback.State.SUCCEEDED:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
