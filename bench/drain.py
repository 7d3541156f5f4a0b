"""Drain rate of many concurrent rollbacks against raw Celery (SPEC §6, second row).

    DEBUG=1 .venv/bin/python -m bench.drain [--small] [--shape parallel|chain]
        [--rollbacks R] [--drain-timeout S] [--require-drain] [--worker-settings MOD]

One Celery worker with 2 pool processes (the machine has 2 cores; prefork, prefetch 1,
acks_late: the project's settings) on Redis db 13 and a throwaway PostgreSQL database:

- raw: R × 10 ``bench.tasks.noop`` tasks sent from 4 threads (as many as start the
  rollbacks); each INCRs a Redis counter and the one that reaches the total stamps the
  time. Rate = tasks / (stamp − moment the first was sent). Run before the Unwind drain
  and again after it (on a fresh worker, Redis flushed); the baseline is the mean.
- unwind: R process runs, each with 10 completed forward actions on 10 systems (rows
  bulk-created: setup, not measured), planned with ``engine.rollback_plan`` from 4 threads
  (timed: a figure of its own, not in the drain), then started with
  ``engine.rollback_start`` from 4 threads. Rate = succeeded steps / (last
  ``Rollback.finished_at`` − moment the first rollback was started). The drain is
  time-boxed (``--drain-timeout``, 120 s) so that a full run stays under 5 minutes; when
  the box ends first, the rate is the steps that succeeded within it over the box.
  ``--shape parallel`` (default): no dependency edges, so each rollback is 1 stage of 10
  parallel steps. ``--shape chain``: a chain of ``before`` edges, 10 stages of 1 step.

Checks, after a warm shutdown of the worker (steps in flight finish, prefetched messages
go back to Redis): 0 lost = every step that did not succeed still has its ``run_step``
message in Redis (nothing was dropped); 0 duplicate effects = no step has more than one
succeeded attempt or more than one ``step.attempt.succeeded`` ledger entry; the total of
attempts is printed. No beat, no sweeper: nothing re-sends a message behind our back.
Target: unwind rate ≥ 0.5 × raw rate.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from bench._harness import Bench, bulk_runs, machine, make_estate

TARGET_RATIO = 0.5
STEPS = 10
THREADS = 4
RESERVE_S = 80  # for the quiesce, the checks and the second raw baseline


def raw_drain(b: Bench, total: int, timeout_s: float) -> tuple[float, float]:
    """(tasks per second, seconds) for ``total`` no-op tasks on the running worker."""
    from bench.tasks import DRAIN_COUNT_KEY, DRAIN_DONE_KEY
    from config.celery import app

    b.redis.delete(DRAIN_COUNT_KEY, DRAIN_DONE_KEY)

    def send(n: int) -> None:
        for _ in range(n):
            app.send_task("bench.tasks.noop", kwargs={"target": total})

    # Sent from as many threads as the rollbacks are started from (see main), so that the
    # sender is not what limits the baseline.
    shares = [total // THREADS + (1 if i < total % THREADS else 0) for i in range(THREADS)]
    t0 = time.time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, shares))
    sent_s = time.time() - t0
    deadline = time.monotonic() + timeout_s
    while (done := b.redis.get(DRAIN_DONE_KEY)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"raw drain: {int(b.redis.get(DRAIN_COUNT_KEY) or 0)} of {total} after {timeout_s} s"
            )
        time.sleep(0.05)
    elapsed = float(done) - t0
    b.log(f"raw drain: {total} tasks in {elapsed:.2f} s (sending took {sent_s:.2f} s)")
    return total / elapsed, elapsed


def in_threads(fn, items, threads: int = THREADS) -> list:
    """Run ``fn`` over items from a thread pool; each thread closes its own DB connection."""
    from django.db import connections

    def call(item):
        try:
            return fn(item)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, items))


def step_ids_in_broker(b: Bench) -> set[int]:
    """Step ids of the ``run_step`` (one step) and ``run_steps`` (a dispatch's steps)
    messages still in Redis (queued, or unacked)."""
    import base64
    import json

    raw = list(b.redis.lrange("celery", 0, -1))
    raw += [json.dumps(json.loads(v)[0]).encode() for v in b.redis.hvals("unacked")]
    ids = set()
    for item in raw:
        msg = json.loads(item)
        if msg["headers"].get("task") not in (
            "rollbacks.tasks.run_step",
            "rollbacks.tasks.run_steps",
        ):
            continue
        body = msg["body"]
        if msg["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        kwargs = json.loads(body)[1]
        ids.update(kwargs.get("step_ids") or [kwargs["step_id"]])
    return ids


def setup_runs(admin, slugs: list[str], count: int) -> list:
    """``count`` process runs with one completed forward action per system, bulk-created."""
    from rollbacks.models import System

    systems = list(System.objects.filter(slug__in=slugs).order_by("slug"))
    return bulk_runs(admin, "bench-drain", "drain", [systems] * count)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="100 rollbacks instead of 1,000")
    ap.add_argument("--rollbacks", type=int, help="number of rollbacks (overrides --small)")
    ap.add_argument("--shape", choices=("parallel", "chain"), default="parallel")
    ap.add_argument("--worker-settings", default="config.settings")
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="time box of the unwind drain, from the first start (seconds)",
    )
    ap.add_argument(
        "--require-drain",
        action="store_true",
        help="fail unless every rollback finished in the box",
    )
    args = ap.parse_args(argv)
    count = args.rollbacks or (100 if args.small else 1000)
    total = count * STEPS

    with Bench("drain", limit_s=295) as b:
        from django.db.models import Count, Max, Q

        from ledger.models import Entry
        from rollbacks import engine
        from rollbacks.models import Attempt, Outbox, Rollback, Step

        b.log(f"machine: {machine()}")
        slugs = [f"d{j}" for j in range(STEPS)]
        edges = (
            [("before", a, c) for a, c in zip(slugs, slugs[1:], strict=False)]
            if args.shape == "chain"
            else []
        )
        t = time.perf_counter()
        admin = make_estate(slugs, edges=edges)
        runs = setup_runs(admin, slugs, count)
        b.log(
            f"{count} runs × {STEPS} forward actions bulk-created in {time.perf_counter() - t:.1f} s"
        )

        t = time.perf_counter()
        rollbacks = in_threads(
            lambda run: engine.rollback_plan(run=run, actor=admin, reason="bench: drain"), runs
        )
        plan_s = time.perf_counter() - t
        stages = {r.stages.count() for r in rollbacks[:3]}
        b.log(
            f"{count} rollbacks planned in {plan_s:.1f} s from {THREADS} threads "
            f"({plan_s / count * 1000 * THREADS:.0f} ms per plan per thread); stages per rollback {stages}"
        )
        if any(r.state != Rollback.State.APPROVED for r in rollbacks):
            raise RuntimeError("a rollback is not approved (an approval gate is configured?)")

        worker = b.start_worker(2, name="c2", settings=args.worker_settings)
        b.log(f"worker up (concurrency 2, settings {args.worker_settings})")
        try:
            raw1, raw1_s = raw_drain(b, total, 120)

            t0 = time.time()
            in_threads(lambda r: engine.rollback_start(rollback=r, actor=admin), rollbacks)
            started_s = time.time() - t0
            at_started = Step.objects.filter(state=Step.State.SUCCEEDED).count()
            b.log(f"{count} rollbacks started in {started_s:.1f} s from {THREADS} threads")
            # The box, cut short if need be so that the checks and the second baseline still
            # fit in the hard limit (a loaded machine makes planning and starting slow).
            deadline = min(
                time.monotonic() + args.drain_timeout - started_s,
                b.t0 + b.limit_s - RESERVE_S,
            )
            next_report = time.monotonic() + 15
            while True:
                done = Rollback.objects.filter(state__in=Rollback.TERMINAL).count()
                if done == count or time.monotonic() > deadline:
                    break
                if time.monotonic() > next_report:
                    steps_done = Step.objects.filter(state=Step.State.SUCCEEDED).count()
                    b.log(f"  … {done} rollbacks finished, {steps_done} steps succeeded")
                    next_report += 15
                time.sleep(0.5)
            drained = done == count
            if drained:
                finished_at = Rollback.objects.aggregate(m=Max("finished_at"))["m"]
                unwind_s = finished_at.timestamp() - t0
                steps_done = Step.objects.filter(state=Step.State.SUCCEEDED).count()
            else:
                # Time-boxed: the rate over the window, counted at its end.
                unwind_s = time.time() - t0
                steps_done = Step.objects.filter(state=Step.State.SUCCEEDED).count()
                b.log(
                    f"time box ({args.drain_timeout:.0f} s, or what the hard limit left) reached: {done} of {count} rollbacks finished"
                )
            unwind_rate = steps_done / unwind_s
            # Once every rollback is started, the workers have the machine to themselves.
            after_s = unwind_s - started_s
            after_rate = (steps_done - at_started) / after_s if after_s >= 10 else None
            b.log(f"unwind drain: {steps_done} steps in {unwind_s:.2f} s")
        except Exception:
            print(b.worker_log_tail(worker))
            raise
        # Quiesce: a warm shutdown lets the steps in flight finish and puts prefetched
        # messages back, so the check below sees a still picture.
        b.stop_worker(worker)
        in_broker = step_ids_in_broker(b)
        unfinished = list(
            Step.objects.exclude(state=Step.State.SUCCEEDED).values_list("pk", "state")
        )
        no_message = [pk for pk, state in unfinished if pk not in in_broker]
        b.log(
            f"worker stopped; {len(unfinished)} steps unfinished, {len(in_broker)} run_step messages in Redis"
        )
        if no_message:
            keys = {k.decode(): b.redis.type(k).decode() for k in b.redis.keys("*")}
            b.log(f"  steps with no message: {no_message[:20]}; Redis keys: {keys}")
            b.log(f"  worker log tail:\n{b.worker_log_tail(worker, 2000)}")

        b.flush_redis()
        worker = b.start_worker(2, name="c2b", settings=args.worker_settings)
        try:
            raw2, raw2_s = raw_drain(b, total, 120)
        except Exception:
            print(b.worker_log_tail(worker))
            raise

        # Checks -------------------------------------------------------------------------
        by_state = dict(Rollback.objects.values_list("state").annotate(n=Count("id")))
        step_states = dict(Step.objects.values_list("state").annotate(n=Count("id")))
        attempts_total = Attempt.objects.count()
        per_step = Step.objects.annotate(
            a=Count("attempt_set"),
            ok=Count("attempt_set", filter=Q(attempt_set__outcome="succeeded")),
        )
        multi_attempt = per_step.filter(a__gt=1).count()
        dup_succeeded = per_step.filter(ok__gt=1).count()
        ledger_ok = dict(
            Entry.objects.filter(action="step.attempt.succeeded")
            .values_list("subject_id")
            .annotate(n=Count("id"))
            .values_list("subject_id", "n")
        )
        dup_ledger = sum(1 for n in ledger_ok.values() if n > 1)
        # Lost: a step that did not succeed and has no message left to make it run.
        lost = len(no_message)
        outbox_rows = Outbox.objects.filter(task=engine.RUN_STEP).count()
        unsent = Outbox.objects.filter(task=engine.RUN_STEP, sent_at__isnull=True).count()

        raw = (raw1 + raw2) / 2
        ratio = unwind_rate / raw
        print()
        print(
            f"drain  {count} rollbacks × {STEPS} no-op steps ({args.shape}: "
            f"{'1 stage of 10 parallel steps' if args.shape == 'parallel' else '10 stages of 1 step'})"
            f"  worker concurrency 2  settings={args.worker_settings}"
        )
        print(
            f"  planning {count} rollbacks: {plan_s:.1f} s ({THREADS} threads; not in the drain time)"
        )
        print(
            f"  raw celery  {total} no-op tasks: {raw1:7.1f} tasks/s ({raw1_s:.1f} s) before, "
            f"{raw2:7.1f} tasks/s ({raw2_s:.1f} s) after; baseline {raw:.1f}/s"
        )
        print(
            f"  unwind      {steps_done} steps: {unwind_rate:7.1f} steps/s ({unwind_s:.1f} s; "
            f"starting all {count} took {started_s:.1f} s of it)"
            + ("" if drained else f"  — time-boxed at {unwind_s:.0f} s: rate over the box")
        )
        print(
            f"  of which: {at_started} steps while the {count} rollbacks were being started "
            f"({started_s:.1f} s), then "
            + (
                f"{steps_done - at_started} in {after_s:.1f} s = {after_rate:.1f} steps/s "
                f"(= {after_rate / raw:.2f}x raw)"
                if after_rate is not None
                else "too little time left in the box for a separate rate"
            )
        )
        print(
            f"  ratio unwind / raw = {ratio:.2f}x   target >= {TARGET_RATIO}x   "
            f"{'MET' if ratio >= TARGET_RATIO else 'NOT MET'}"
        )
        print(f"  rollbacks by state: {by_state}")
        print(f"  steps by state: {step_states}")
        print(
            f"  steps not succeeded: {len(unfinished)}, of which with no run_step message left in "
            f"Redis (lost): {lost}{' ' + str(no_message[:10]) if no_message else ''}"
        )
        print(
            f"  steps with more than one attempt: {multi_attempt}   "
            f"steps with more than one succeeded attempt: {dup_succeeded}   "
            f"duplicate step.attempt.succeeded ledger entries: {dup_ledger}"
        )
        print(
            f"  attempts in total: {attempts_total} for {total} steps; run_step outbox rows "
            f"{outbox_rows} ({unsent} unsent)"
        )
        print(f"  machine at the end: {machine()}")
        ok = (
            lost == 0
            and dup_succeeded == 0
            and dup_ledger == 0
            and (drained or not args.require_drain)
        )
        print(
            f"  checks: {'0 lost, 0 duplicate effects' if ok else 'FAILED'}"
            + (
                ""
                if drained
                else " (not drained within the time box: the unfinished steps were "
                "checked to still have their message in the broker)"
            )
        )
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
