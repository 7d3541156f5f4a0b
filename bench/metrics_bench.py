"""The metrics page's queries against a per-rollback loop, at N/10 and N rollbacks.

    DEBUG=1 .venv/bin/python -m bench.metrics_bench [--small]

On a throwaway PostgreSQL database (``bench/_harness.py``: created here, dropped at the
end; no worker):

1. Setup, not measured: 20 systems; N finished rollbacks (5,000; 1,000 with ``--small``)
   over 60 days, each with a failed run, three steps on three systems in two stages, with
   mixed outcomes (retries, skips, failures, a drill in ten).
2. ``dashboard.metrics.compute`` for the whole period as a superuser, at N/10 and at N
   rollbacks (median of 5 runs each), with its query count.
3. Baseline, in the same run: a per-rollback loop computing only the mean latency and the
   step outcomes (one query for the rollbacks, one per rollback for its steps), the shape
   the aggregates replace.

Target: compute's queries do not grow with N, and at N it takes well under the loop's time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from bench._harness import Bench, machine, make_estate

LIMIT_S = 450
DAY0 = datetime(2026, 1, 1, tzinfo=UTC)


def populate(n: int, slugs: list[str], admin, offset: int = 0) -> None:
    from rollbacks.models import (
        ForwardAction,
        ProcessRun,
        Rollback,
        Stage,
        Step,
        System,
    )

    rng = random.Random(7 + offset)
    systems = list(System.objects.filter(slug__in=slugs))
    R, S = Rollback.State, Step.State
    runs = ProcessRun.objects.bulk_create(
        ProcessRun(process="bench", external_id=f"r{offset + i}", status="failed") for i in range(n)
    )
    rollbacks, created = [], []
    for i, run in enumerate(runs):
        at = DAY0 + timedelta(minutes=rng.randrange(60 * 24 * 60))
        created.append(at)
        state = rng.choice([R.SUCCEEDED] * 7 + [R.FAILED, R.PARTIALLY_ROLLED_BACK, R.ABORTED])
        rollbacks.append(
            Rollback(
                run=run,
                state=state,
                reason="bench",
                is_drill=i % 10 == 0,
                requested_by=admin,
                started_at=at,
                finished_at=at + timedelta(seconds=rng.randrange(30, 3600)),
            )
        )
    rollbacks = Rollback.objects.bulk_create(rollbacks)
    ProcessRun.objects.filter(pk__in=[r.pk for r in runs]).update(failed_at=DAY0)
    stages = Stage.objects.bulk_create(
        Stage(
            rollback=r,
            index=k,
            state="succeeded",
            started_at=r.started_at,
            finished_at=r.started_at + timedelta(seconds=rng.randrange(5, 600)),
        )
        for r in rollbacks
        for k in (1, 2)
    )
    actions = ForwardAction.objects.bulk_create(
        ForwardAction(
            run=r.run,
            sequence=k,
            system=rng.choice(systems),
            action_type="undo",
            idempotency_key=f"k{k}",
        )
        for r in rollbacks
        for k in range(3)
    )
    steps = []
    for i, r in enumerate(rollbacks):
        for k in range(3):
            action = actions[i * 3 + k]
            state = rng.choice([S.SUCCEEDED] * 8 + [S.SKIPPED, S.FAILED])
            steps.append(
                Step(
                    rollback=r,
                    stage=stages[i * 2 + (k > 0)],
                    forward_action=action,
                    system=action.system,
                    kind="simulated",
                    state=state,
                    idempotency_key=f"b{r.pk}-{k}",
                    attempts=rng.choice([1, 1, 1, 2, 3]),
                )
            )
    Step.objects.bulk_create(steps, batch_size=5000)
    # created_at is auto_now_add: set it afterwards.
    for r, at in zip(rollbacks, created, strict=True):
        r.created_at = at
    Rollback.objects.bulk_update(rollbacks, ["created_at"], batch_size=5000)


def timed(fn, repeat: int = 5) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times), len(queries.captured_queries)


def naive(user) -> tuple[timedelta, dict[str, int]]:
    """The loop the aggregates replace: every rollback, then its steps, one by one."""
    from rollbacks.models import Rollback

    total, count, outcomes = timedelta(), 0, {}
    for rollback in Rollback.objects.visible_to(user).filter(is_drill=False):
        total += rollback.finished_at - rollback.created_at
        count += 1
        for step in rollback.steps.all():
            outcomes[step.state] = outcomes.get(step.state, 0) + 1
    return total / max(count, 1), outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    n = 1_000 if parser.parse_args().small else 5_000
    with Bench("metrics", limit_s=LIMIT_S) as b:
        b.log(machine())
        from dashboard.metrics import Filters, compute

        slugs = [f"sys-{i:02d}" for i in range(20)]
        admin = make_estate(slugs, edges=[])
        filters = Filters(since=DAY0, until=DAY0 + timedelta(days=61))
        results = {}
        for size, offset in ((n // 10, 0), (n, n // 10)):
            t = time.monotonic()
            populate(size - (n // 10 if offset else 0), slugs, admin, offset)
            b.log(f"{size} rollbacks in place ({time.monotonic() - t:.1f} s)")
            results[size] = timed(lambda: compute(admin, filters))
            loop = timed(lambda: naive(admin), repeat=1 if size >= 5000 else 3)
            b.log(
                f"N={size}: compute {results[size][0] * 1000:.0f} ms in {results[size][1]} queries;"
                f" per-rollback loop {loop[0] * 1000:.0f} ms in {loop[1]} queries;"
                f" ratio compute/loop {results[size][0] / loop[0]:.2f}"
            )
        small, large = results[n // 10], results[n]
        b.log(
            f"compute at N={n} vs N={n // 10}: time ×{large[0] / small[0]:.1f}, "
            f"queries {small[1]} → {large[1]}"
        )
        b.log(machine())


if __name__ == "__main__":
    main()
