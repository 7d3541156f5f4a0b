"""Where a step's time goes on the execution loop's path, in-process (no worker).

    DEBUG=1 .venv/bin/python -m bench.profile_batch [--rollbacks 20] [--batch 64] [--cprofile]
    DEBUG=1 .venv/bin/python -m bench.profile_batch --chain 50 [--cprofile] [--queries]

Plans and starts R rollbacks of one stage of 10 parallel no-op steps, then plays the loop of
``rollbacks/engine/loop.py`` in this process: ``claim_batch`` up to B due steps, a successful
outcome for each (the executor is left out: it is the target's time), ``record_batch``;
until every rollback has ended. Counts the queries and the CPU of this process per step,
by phase; the outbox really publishes to Redis db 13 (nobody consumes it).

``--chain N`` plays ``bench.step_overhead``'s rollback instead: N stages of one step each,
chained by ``before`` edges. Each record holds the next stage's outbox row, as the loop does
(``ENGINE_INLINE_STEPS``), and the next claim takes it as its hint. ``--queries`` prints the
SQL of one step in the middle of the chain.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections import Counter

from bench._harness import Bench, bulk_runs, machine, make_estate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rollbacks", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--chain", type=int, default=0, help="one rollback of N chained stages")
    ap.add_argument("--queries", action="store_true", help="print one chained step's SQL")
    ap.add_argument("--sort", default="tottime", help="pstats order of --cprofile's table")
    ap.add_argument("--top", type=int, default=25, help="rows of --cprofile's table")
    ap.add_argument("--callers", default="", help="also who calls the functions matching this")
    ap.add_argument("--callees", default="", help="also what the functions matching this call")
    args = ap.parse_args(argv)

    with Bench("profile_batch", limit_s=240):
        from django.db import connection, reset_queries

        from rollbacks import engine, outbox
        from rollbacks.engine import loop as runner
        from rollbacks.models import Rollback, System

        n = args.chain or 10
        slugs = [f"p{i:03d}" for i in range(n)]
        chain = [("before", a, b) for a, b in zip(slugs, slugs[1:], strict=False)]
        admin = make_estate(slugs, edges=chain if args.chain else [])
        systems = list(System.objects.filter(slug__in=slugs).order_by("slug"))
        runs = bulk_runs(admin, "profile", "pb", [systems] * (1 if args.chain else args.rollbacks))
        rollbacks = [
            engine.rollback_plan(run=run, actor=admin, reason="bench: profile") for run in runs
        ]
        reset_queries()
        c0 = time.process_time()
        for rollback in rollbacks:
            engine.rollback_start(rollback=rollback, actor=admin)
        start_cpu = (time.process_time() - c0) * 1000 / len(rollbacks)
        start_queries = len(connection.queries) / len(rollbacks)

        prof = cProfile.Profile(time.process_time) if args.cprofile else None
        phases = Counter()
        queries = Counter()
        steps = 0
        hints: dict[int, int | None] = {}
        shown = False
        while Rollback.objects.filter(state=Rollback.State.RUNNING).exists():
            reset_queries()
            c0 = time.process_time()
            if prof:
                prof.enable()
            claimed = runner.claim_batch(hints=hints, limit=args.batch, worker="profile")
            c1 = time.process_time()
            n_claim = len(connection.queries)
            results = [
                runner.Result(c, {"ok": True, "output": {"simulated": True}}) for c in claimed
            ]
            held: list = []
            if results:
                with outbox.holding(engine.RUN_STEP, held):
                    runner.record_batch(results)
            hints = {row.kwargs["step_id"]: row.pk for row in held}
            if prof:
                prof.disable()
            c2 = time.process_time()
            if args.queries and not shown and steps >= n // 2:
                shown = True
                print(f"\n-- one step's SQL ({n_claim} in the claim, then the record)")
                for q in connection.queries:
                    print(f"{float(q['time']) * 1000:6.2f} ms  {q['sql'][:300]}")
            phases["claim"] += (c1 - c0) * 1000
            phases["record"] += (c2 - c1) * 1000
            queries["claim"] += n_claim
            queries["record"] += len(connection.queries) - n_claim
            steps += len(claimed)
        print()
        shape = (
            f"one rollback of {n} chained stages of one no-op step"
            if args.chain
            else f"{args.rollbacks} rollbacks × 10 parallel no-op steps"
        )
        print(f"profile_batch  {shape}, batches of up to {args.batch}")
        print(f"  machine: {machine()}")
        print(f"  steps: {steps}")
        print(
            f"  rollback_start CPU {start_cpu:6.2f} ms/rollback   "
            f"queries {start_queries:5.2f}/rollback (with its publish after commit)"
        )
        for phase in ("claim", "record"):
            print(
                f"  {phase:7s} CPU {phases[phase] / steps:6.2f} ms/step   "
                f"queries {queries[phase] / steps:5.2f}/step"
            )
        print(f"  total   CPU {sum(phases.values()) / steps:6.2f} ms/step")
        if prof:
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out).sort_stats(args.sort)
            stats.print_stats(args.top)
            if args.callers:
                stats.print_callers(args.callers)
            if args.callees:
                stats.print_callees(args.callees)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
