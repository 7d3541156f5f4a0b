"""I/O-bound drain: many rollbacks whose steps each wait 100 ms on an HTTP target (SPEC §6,
"I/O-bound work"; issue 14).

    DEBUG=1 .venv/bin/python -m bench.io_drain [--small] [--hang N] [--limit S]

On a throwaway PostgreSQL database and Redis db 13 (bench/_harness.py), with the project's
production processes as Procfile.demo starts them: the ``worker:`` line (``--concurrency``
set to 2 on this 2-core machine; ``-I bench.tasks`` and a node name added for the harness)
and the ``beat:`` line (the sweeper every ``SWEEP_INTERVAL_S``, as in production; its
schedule file in the work folder). A change of those lines is measured without touching
this script.

The target, ``bench/http_target.py``, runs in a process of its own (asyncio, so hundreds of
connections at once are cheap) and answers ``POST /undo/<id>`` after 100 ms, counting the
requests per ``Idempotency-Key``.

1. **Baseline** (same worker, same target): R × 10 ``bench.tasks.http_call`` Celery tasks,
   each the same 100 ms POST with an ``Idempotency-Key``, sent at once from 4 threads.
   Rate = tasks / (last one done − first sent); when its box (at most 60 s) ends first,
   the tasks done in it over the box, and the rest is purged from the queue.
2. **Run 1**: R rollbacks (100; 20 with ``--small``) of a run with 10 completed forward
   actions on 10 systems with no dependency edges: **one stage of 10 parallel steps** each,
   every step ``{"kind": "http", "method": "POST", "url": "<target>/undo/{params.id}"}``.
   All are planned first (not timed), then started from 4 threads in one go. Steps/s =
   succeeded steps / (last finish − first start). Per-rollback duration = its
   ``finished_at − started_at``.
3. **Run 2** (``--hang N``; N of 100, scaled with ``--small``): the same on fresh rollbacks,
   but in N of them (every R/N-th) one of the 10 systems is ``hang``, whose target
   (``/hang/<id>``) never answers; its contract gives the step ``timeout_s`` 10, 1 attempt,
   not retryable, so it fails after 10 s and waits for a human (its stage halts; its 9
   other steps succeed). The run ends when every step has succeeded, been skipped or
   cancelled, or waits for a human. Reported: the other R − N rollbacks' durations
   against run 1's (p50 and max ratio; target ≤ 1.2).

Each run is time-boxed so the script always stops within ``--limit`` (290 s): a box that
ends first reports the steps that succeeded in it (rate over the box) and how far it got;
then worker and beat are stopped (warm), the unfinished steps are checked to still have a
``run_step`` message in Redis or an unsent outbox row, the unfinished rollbacks are
aborted, Redis is flushed and worker and beat start again for the next run.

Checks per run: lost effects = succeeded steps whose key the target never received (and,
time-boxed, unfinished steps with nothing left to run them); duplicate effects = keys the
target received more than once (nothing fails in run 1, so any second request is a
duplicate), steps with more than one succeeded attempt, duplicate
``step.attempt.succeeded`` ledger entries. The sweeper's work during each run is read from
the worker's log (Celery logs each ``rollbacks.tasks.sweep`` result at INFO, the production
log level): ``redispatched`` counts steps it took for lost and sent again.
"""

from __future__ import annotations

import argparse
import ast
import re
import time
from concurrent.futures import ThreadPoolExecutor

from bench._harness import Bench, bulk_runs, machine, make_estate, percentile
from bench.drain import in_threads, step_ids_in_broker

STEPS = 10
THREADS = 4
DELAY_MS = 100
HANG_TIMEOUT_S = 10
TARGET_RATE = 150.0
TARGET_HANG_RATIO = 1.2
RESERVE_S = 40  # for the checks and clean-up at the end
BOX_RESERVE_S = 35  # after a run that was time-boxed: quiesce, check, restart
# The engine's sweep task (rollbacks.tasks.sweep, or wherever in rollbacks it moves).
SWEEP_RESULT = re.compile(r"Task rollbacks\.[\w.]*sweep\[[^\]]*\] succeeded in [^:]*: (\{.*\})")


# Setup ---------------------------------------------------------------------------------------


def make_io_estate(slugs: list[str], base: str, edges: list[tuple[str, str, str]] = ()):
    """``make_estate``'s team and systems, each with an HTTP ``undo`` to the target; the
    ``hang`` system's undo goes to ``/hang/`` with a 10 s timeout and 1 attempt."""
    from rollbacks import services
    from rollbacks.models import System

    admin = make_estate([*slugs, "hang"], edges=list(edges))
    for system in System.objects.filter(slug__in=[*slugs, "hang"]):
        path = "hang" if system.slug == "hang" else "undo"
        action = {
            "compensation": {
                "kind": "http",
                "method": "POST",
                "url": f"{base}/{path}/{{params.id}}",
            }
        }
        if system.slug == "hang":
            action |= {"timeout_s": HANG_TIMEOUT_S, "attempts": 1, "retryable": False}
        services.contract_publish(
            system=system, actions={"undo": action}, actor=admin, note="bench: io_drain"
        )
    return admin


def plan(admin, runs: list, what: str) -> list:
    from rollbacks import engine
    from rollbacks.models import Rollback

    rollbacks = in_threads(
        lambda run: engine.rollback_plan(run=run, actor=admin, reason=f"bench: {what}"), runs
    )
    if any(r.state != Rollback.State.APPROVED for r in rollbacks):
        raise RuntimeError("a rollback is not approved (an approval gate is configured?)")
    return rollbacks


# Measuring -----------------------------------------------------------------------------------


def target_stats(base: str) -> dict:
    import httpx

    return httpx.get(f"{base}/stats", timeout=30).json()


def raw_http(b: Bench, base: str, total: int, box_s: float) -> dict:
    """``total`` Celery tasks that each make the step's 100 ms POST, on the same worker."""
    from bench.tasks import HTTP_COUNT_KEY, HTTP_DONE_KEY
    from config.celery import app

    b.redis.delete(HTTP_COUNT_KEY, HTTP_DONE_KEY)

    def send(i: int) -> None:
        for k in range(i, total, THREADS):
            app.send_task(
                "bench.tasks.http_call",
                kwargs={"url": f"{base}/undo/raw-{k}", "key": f"raw-{k}", "target": total},
            )

    t0 = time.time()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, range(THREADS)))
    deadline = time.monotonic() + box_s
    while (done := b.redis.get(HTTP_DONE_KEY)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if done is not None:
        n, elapsed = total, float(done) - t0
    else:
        n, elapsed = int(b.redis.get(HTTP_COUNT_KEY) or 0), time.time() - t0
        app.control.purge()  # what is left must not queue ahead of the rollbacks
        time.sleep(1.0)  # for the ones in flight
    b.log(f"raw http: {n} of {total} tasks in {elapsed:.1f} s")
    return {"n": n, "total": total, "s": elapsed, "rate": n / elapsed, "boxed": done is None}


def sweeps_in(logs: list[tuple[object, int]]) -> dict:
    """Sum of the sweep results the worker logged past the given offsets of its log files."""
    total: dict = {"sweeps": 0}
    for path, offset in logs:
        try:
            with open(path, errors="replace") as f:
                f.seek(offset)
                text = f.read()
        except OSError:
            continue
        for m in SWEEP_RESULT.finditer(text):
            try:
                result = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                continue
            total["sweeps"] += 1
            for k, v in result.items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
    return total


def sweep_counts(sweep: dict) -> str:
    """``expired 0, redispatched 3, …`` of ``sweeps_in``, or why there is nothing to add."""
    counts = ", ".join(f"{k} {v}" for k, v in sweep.items() if k != "sweeps")
    return counts or "no sweep result logged in this window (a sweep's message queues like any)"


def log_offsets(procs) -> list[tuple[object, int]]:
    import os

    return [(p.log_path, os.path.getsize(p.log_path)) for p in procs]


class Services:
    """The production worker and beat; restarted after a time-boxed run."""

    def __init__(self, b: Bench, pool: str = ""):
        self.b = b
        self.worker = self.beat = None
        # "threads:64": Celery's threads pool at concurrency 64, without execution loops
        # (ENGINE_RUNNER=0): the candidate the loop was measured against (docs/engine.md).
        self.pool, _, threads = pool.partition(":")
        self.concurrency = int(threads or 2)

    def start(self) -> None:
        self.worker = self.b.start_production_worker(
            name=f"io{len(self.b.workers)}",
            concurrency=self.concurrency,
            pool=self.pool,
            env={"ENGINE_RUNNER": "0"} if self.pool else None,
        )
        self.beat = self.b.start_production_beat()

    def stop(self) -> None:
        for proc in (self.beat, self.worker):
            if proc is not None:
                self.b.stop_worker(proc)


def drain_run(b: Bench, svc: Services, admin, base: str, rollbacks, box_s: float, label: str):
    """Start every rollback in one go and wait until nothing is left to run, or the box ends."""
    from django.db.models import Count, Max, Q

    from ledger.models import Entry
    from rollbacks import engine
    from rollbacks.models import Attempt, Outbox, Rollback, Step

    ids = [r.pk for r in rollbacks]
    steps = Step.objects.filter(rollback_id__in=ids)
    # Left to run: anything but done, waiting for a human, or cancelled (so a state the
    # engine may add, a "claimed" say, counts as still running).
    settled = (*Step.DONE, *Step.NEEDS_HUMAN, Step.State.CANCELLED)
    offsets = log_offsets([svc.worker])
    t0 = time.time()
    in_threads(lambda r: engine.rollback_start(rollback=r, actor=admin), rollbacks)
    started_s = time.time() - t0
    b.log(f"{label}: {len(ids)} rollbacks started in {started_s:.1f} s from {THREADS} threads")
    deadline = time.monotonic() + box_s - started_s
    next_report = time.monotonic() + 15
    while (left := steps.exclude(state__in=settled).count()) and time.monotonic() < deadline:
        if time.monotonic() > next_report:
            ok = steps.filter(state=Step.State.SUCCEEDED).count()
            b.log(f"  … {label}: {ok} steps succeeded, {left} still to run")
            next_report += 15
        time.sleep(0.25)
    drained = not left
    now = time.time()
    ok_steps = steps.filter(state=Step.State.SUCCEEDED).count()
    if drained:
        last = Attempt.objects.filter(step__rollback_id__in=ids).aggregate(m=Max("finished_at"))
        end = max(last["m"].timestamp(), t0 + 1e-3)
    else:
        end = now
    durations = {
        pk: (fin - st).total_seconds()
        for pk, st, fin in Rollback.objects.filter(
            pk__in=ids, finished_at__isnull=False
        ).values_list("pk", "started_at", "finished_at")
    }
    sweep = sweeps_in(offsets)
    lost_boxed = None
    if not drained:
        b.log(f"{label}: time box ({box_s:.0f} s) reached, {left} steps still to run")
        svc.stop()  # warm: in-flight steps finish, prefetched messages go back
        in_broker = step_ids_in_broker(b)
        unsent = {
            step_id
            for o in Outbox.objects.filter(sent_at__isnull=True)
            .values_list("kwargs", flat=True)
            .iterator()
            for step_id in o.get("step_ids") or [o.get("step_id")]
        }
        unfinished = list(steps.exclude(state__in=settled).values_list("pk", flat=True))
        lost_boxed = [pk for pk in unfinished if pk not in in_broker and pk not in unsent]
        for r in Rollback.objects.filter(pk__in=ids).exclude(state__in=Rollback.TERMINAL):
            engine.rollback_abort(rollback=r, actor=admin, reason="bench: time box ended")
        b.flush_redis()
        svc.start()

    stats = target_stats(base)
    calls, hang_calls = stats["calls"], stats["hang_calls"]
    keyed = list(steps.values_list("idempotency_key", "state", "system__slug"))
    succeeded_unseen = [
        k
        for k, st, slug in keyed
        if st == Step.State.SUCCEEDED and slug != "hang" and k not in calls
    ]
    dup_keys = [k for k, _, slug in keyed if calls.get(k, 0) > 1 or hang_calls.get(k, 0) > 1]
    per_step = steps.annotate(
        a=Count("attempt_set"),
        good=Count("attempt_set", filter=Q(attempt_set__outcome="succeeded")),
    )
    step_ids = list(steps.values_list("pk", flat=True))
    ledger_ok = (
        Entry.objects.filter(
            action="step.attempt.succeeded", subject_id__in=[str(i) for i in step_ids]
        )
        .values("subject_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    return {
        "label": label,
        "n": len(ids),
        "steps_total": len(step_ids),
        "ok_steps": ok_steps,
        "s": end - t0,
        "started_s": started_s,
        "rate": ok_steps / (end - t0),
        "drained": drained,
        "left": left,
        "durations": durations,
        "sweep": sweep,
        "lost": len(succeeded_unseen) + len(lost_boxed or []),
        "succeeded_unseen": succeeded_unseen[:10],
        "lost_boxed": lost_boxed,
        "dup_keys": dup_keys[:10],
        "n_dup_keys": len(dup_keys),
        "dup_attempts": per_step.filter(good__gt=1).count(),
        "dup_ledger": ledger_ok,
        "attempts": Attempt.objects.filter(step_id__in=step_ids).count(),
        "max_in_flight": stats["max_in_flight"],
        "states": dict(steps.values_list("state").annotate(c=Count("id"))),
    }


def ratio(x: float, baseline: float) -> str:
    return f"{x / baseline:.2f}x" if baseline else "n/a (no baseline)"


def fmt_durations(xs: list[float]) -> str:
    if not xs:
        return "none finished"
    return (
        f"p50 {percentile(xs, 50):6.2f} s  p95 {percentile(xs, 95):6.2f} s  max {max(xs):6.2f} s"
        f"  ({len(xs)} rollbacks)"
    )


def report(run: dict, raw: dict) -> bool:
    boxed = "" if run["drained"] else f"  — TIME-BOXED: {run['left']} steps still to run at the end"
    print(
        f"  {run['label']}: {run['ok_steps']} of {run['steps_total']} steps succeeded in "
        f"{run['s']:.1f} s (starting all {run['n']} took {run['started_s']:.1f} s of it): "
        f"{run['rate']:.1f} steps/s = {ratio(run['rate'], raw['rate'])} raw{boxed}"
    )
    print(f"    steps by state: {run['states']}; attempts {run['attempts']}")
    print(
        f"    target: at most {run['max_in_flight']} requests in flight at once (cumulative "
        "since the target started)"
    )
    sw = run["sweep"]
    print(
        f"    sweeper during the run (worker log): {sw.get('sweeps', 0)} sweeps, "
        + sweep_counts(sw)
    )
    lost_ok = run["lost"] == 0
    dup_ok = run["n_dup_keys"] == 0 and run["dup_attempts"] == 0 and run["dup_ledger"] == 0
    print(
        f"    lost effects: {run['lost']}"
        + (
            f" (succeeded, never seen by the target: {run['succeeded_unseen']})"
            if run["succeeded_unseen"]
            else ""
        )
        + (
            f"; unfinished with no message or unsent row left: {len(run['lost_boxed'])}"
            if run["lost_boxed"] is not None
            else ""
        )
        + f"   duplicate effects: keys sent twice {run['n_dup_keys']}{' ' + str(run['dup_keys']) if run['dup_keys'] else ''}, "
        f"steps with 2+ succeeded attempts {run['dup_attempts']}, duplicate succeeded ledger "
        f"entries {run['dup_ledger']}   {'OK' if lost_ok and dup_ok else 'FAILED'}"
    )
    return lost_ok and dup_ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="20 rollbacks instead of 100")
    ap.add_argument(
        "--hang",
        type=int,
        default=0,
        help="a second run where this many of 100 rollbacks have a hanging step (scaled with --small)",
    )
    ap.add_argument("--limit", type=int, default=290, help="hard time limit of the whole run (s)")
    ap.add_argument(
        "--pool",
        default="",
        help="compare a Celery pool instead, e.g. threads:64 (with ENGINE_RUNNER=0)",
    )
    args = ap.parse_args(argv)
    count = 20 if args.small else 100
    hang = min(count - 1, round(args.hang * count / 100)) if args.hang else 0
    total = count * STEPS

    with Bench("io_drain", limit_s=args.limit) as b:
        b.log(f"machine: {machine()}")
        _target, base = b.start_target(delay_ms=DELAY_MS)
        slugs = [f"io{j}" for j in range(STEPS)]
        t = time.perf_counter()
        admin = make_io_estate(slugs, base)
        from rollbacks.models import System

        systems = list(System.objects.filter(slug__in=slugs).order_by("slug"))
        hang_system = System.objects.get(slug="hang")
        runs1 = bulk_runs(admin, "bench-io-a", "io-a", [systems] * count)
        every = count // hang if hang else 0
        hang_at = {i for i in range(0, count, every)} if hang else set()
        hang_at = set(sorted(hang_at)[:hang])
        runs2 = (
            bulk_runs(
                admin,
                "bench-io-b",
                "io-b",
                [[hang_system, *systems[1:]] if i in hang_at else systems for i in range(count)],
            )
            if hang
            else []
        )
        rollbacks1 = plan(admin, runs1, "io drain")
        rollbacks2 = plan(admin, runs2, "io drain with hanging targets") if hang else []
        b.log(
            f"{len(rollbacks1) + len(rollbacks2)} rollbacks planned in {time.perf_counter() - t:.1f} s "
            f"(1 stage of {STEPS} parallel HTTP steps each); target {base}"
        )

        svc = Services(b, args.pool)
        svc.start()
        b.log(
            f"worker ({'--pool ' + args.pool + ', ENGINE_RUNNER=0' if args.pool else 'Procfile.demo, concurrency 2'}) and beat up"
        )
        try:
            budget = b.limit_s - (time.monotonic() - b.t0) - RESERVE_S
            raw = raw_http(b, base, total, min(60.0, budget * 0.2))
            budget = b.limit_s - (time.monotonic() - b.t0) - RESERVE_S
            box1 = (budget - BOX_RESERVE_S) / 2 if hang else budget
            run1 = drain_run(b, svc, admin, base, rollbacks1, box1, "run 1")
            run2 = None
            if hang:
                budget = b.limit_s - (time.monotonic() - b.t0) - RESERVE_S
                run2 = drain_run(b, svc, admin, base, rollbacks2, budget, f"run 2 ({hang} hanging)")
        except Exception:
            if svc.worker is not None:
                print(b.worker_log_tail(svc.worker))
            raise

        print()
        print(
            f"io_drain  {count} rollbacks × {STEPS} HTTP steps (1 stage of {STEPS} parallel steps), "
            f"target answers in {DELAY_MS} ms; production worker (Procfile.demo) at concurrency 2 + beat"
        )
        print(
            f"  raw celery  {raw['n']} of {raw['total']} tasks, each the same {DELAY_MS} ms POST: "
            f"{raw['rate']:.1f} tasks/s ({raw['s']:.1f} s"
            + (", time-boxed: rate over the box)" if raw["boxed"] else ")")
        )
        ok = report(run1, raw)
        d1 = list(run1["durations"].values())
        print(f"    per-rollback duration: {fmt_durations(d1)}")
        print(
            f"  steps/s = {run1['rate']:.1f}   target >= {TARGET_RATE:.0f}   "
            f"{'MET' if run1['rate'] >= TARGET_RATE and run1['drained'] else 'NOT MET'}"
        )
        if run2 is not None:
            ok = report(run2, raw) and ok
            hang_ids = {rollbacks2[i].pk for i in hang_at}
            others = [v for k, v in run2["durations"].items() if k not in hang_ids]
            print(f"    the {count - hang} without a hanging step: {fmt_durations(others)}")
            if others and d1:
                p50r = percentile(others, 50) / percentile(d1, 50)
                maxr = max(others) / max(d1)
                met = max(p50r, maxr) <= TARGET_HANG_RATIO and run1["drained"] and run2["drained"]
                print(
                    f"    vs run 1: p50 {p50r:.2f}x, max {maxr:.2f}x   target <= {TARGET_HANG_RATIO}x   "
                    f"{'MET' if met else 'NOT MET'}"
                    + (
                        ""
                        if len(others) == count - hang
                        else f" (only {len(others)} of {count - hang} finished)"
                    )
                )
        print(f"  machine at the end: {machine()}")
        if shared := b.redis_was_shared():
            print(f"  WARNING: {shared}")
        print(f"  checks: {'0 lost, 0 duplicate effects' if ok else 'FAILED'}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
