"""Where a step's time goes on the execution loop's path, in-process (no worker).

    DEBUG=1 .venv/bin/python -m bench.profile_batch [--rollbacks 20] [--batch 64] [--cprofile]

Plans and starts R rollbacks of one stage of 10 parallel no-op steps, then plays the loop of
``rollbacks/engine/loop.py`` in this process: ``claim_batch`` up to B due steps, a successful
outcome for each (the executor is left out: it is the target's time), ``record_batch``;
until every rollback has ended. Counts the queries and the CPU of this process per step,
by phase; the outbox really publishes to Redis db 13 (nobody consumes it).
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
    args = ap.parse_args(argv)

    with Bench("profile_batch", limit_s=240):
        from django.db import connection, reset_queries

        from rollbacks import engine
        from rollbacks.engine import loop as runner
        from rollbacks.models import Rollback, System

        slugs = [f"p{i:02d}" for i in range(10)]
        admin = make_estate(slugs, edges=[])
        systems = list(System.objects.filter(slug__in=slugs).order_by("slug"))
        runs = bulk_runs(admin, "profile", "pb", [systems] * args.rollbacks)
        rollbacks = [
            engine.rollback_plan(run=run, actor=admin, reason="bench: profile") for run in runs
        ]
        for rollback in rollbacks:
            engine.rollback_start(rollback=rollback, actor=admin)

        prof = cProfile.Profile(time.process_time) if args.cprofile else None
        phases = Counter()
        queries = Counter()
        steps = 0
        while Rollback.objects.filter(state=Rollback.State.RUNNING).exists():
            reset_queries()
            c0 = time.process_time()
            if prof:
                prof.enable()
            claimed = runner.claim_batch(hints={}, limit=args.batch, worker="profile")
            c1 = time.process_time()
            n_claim = len(connection.queries)
            results = [
                runner.Result(c, {"ok": True, "output": {"simulated": True}}) for c in claimed
            ]
            if results:
                runner.record_batch(results)
            if prof:
                prof.disable()
            c2 = time.process_time()
            phases["claim"] += (c1 - c0) * 1000
            phases["record"] += (c2 - c1) * 1000
            queries["claim"] += n_claim
            queries["record"] += len(connection.queries) - n_claim
            steps += len(claimed)
        print()
        print(
            f"profile_batch  {args.rollbacks} rollbacks × 10 parallel no-op steps, "
            f"batches of up to {args.batch}"
        )
        print(f"  machine: {machine()}")
        print(f"  steps: {steps}")
        for phase in ("claim", "record"):
            print(
                f"  {phase:7s} CPU {phases[phase] / steps:6.2f} ms/step   "
                f"queries {queries[phase] / steps:5.2f}/step"
            )
        print(f"  total   CPU {sum(phases.values()) / steps:6.2f} ms/step")
        if prof:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
