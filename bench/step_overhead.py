"""Per-step orchestration overhead against a raw Celery round trip (SPEC §6, first row).

    DEBUG=1 .venv/bin/python -m bench.step_overhead [--small] [--n N] [--worker-settings MOD]

One Celery worker (concurrency 1, prefetch 1, acks_late: the project's settings) on Redis
db 13 and a throwaway PostgreSQL database serves both sides, so the two chains are strictly
sequential and like for like:

- raw: a chain of N ``bench.tasks.hop`` tasks; each RPUSHes ``time.time()`` to a Redis list
  and sends the next with ``app.send_task``. Per hop = difference of consecutive stamps.
  Run before and after the Unwind chain; the baseline pools both (2 × (N-1) hops).
- unwind: one rollback of a run with N completed forward actions on N systems chained by
  ``before`` edges, so the plan has N stages of one no-op step (``simulated``, 0 ms),
  planned and started with ``engine.rollback_plan`` / ``rollback_start`` as a superuser.
  Per step = difference of consecutive ``Attempt.started_at``: claim, execute, record,
  advance the stage, dispatch the next through the outbox, broker, claim…

Targets: p50_unwind / p50_raw ≤ 3, p99_unwind ≤ 50 ms. A warm-up chain of each kind runs
first and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench._harness import Bench, machine, make_estate, percentile

TARGET_RATIO = 3.0
TARGET_P99_MS = 50.0


def raw_chain(b: Bench, n: int, key: str, timeout_s: float) -> list[float]:
    """Run a chain of n hops; the n-1 per-hop times in ms."""
    from config.celery import app

    b.redis.delete(key)
    app.send_task("bench.tasks.hop", kwargs={"i": 0, "n": n, "key": key})
    deadline = time.monotonic() + timeout_s
    while b.redis.llen(key) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"raw chain: {b.redis.llen(key)} of {n} hops after {timeout_s} s")
        time.sleep(0.05)
    stamps = [float(v) for v in b.redis.lrange(key, 0, -1)]
    return [(y - x) * 1000 for x, y in zip(stamps, stamps[1:], strict=False)]


def report_run(admin, slugs: list[str], tag: str):
    """A process run with one completed forward action per system, in order."""
    from rollbacks import runs

    run, _ = runs.run_register(process="bench", external_id=tag, actor=admin)
    for i, slug in enumerate(slugs):
        runs.action_report(
            run=run,
            system_slug=slug,
            action_type="undo",
            idempotency_key=f"{tag}-{i}",
            actor=admin,
            params={"i": i},
        )
    return run


def unwind_chain(b: Bench, admin, run, timeout_s: float) -> dict:
    """Plan, start and wait for one rollback; per-step times and their breakdown."""
    from rollbacks import engine
    from rollbacks.models import Attempt, Outbox, Rollback, Step

    t = time.perf_counter()
    rollback = engine.rollback_plan(run=run, actor=admin, reason="bench: step overhead")
    plan_s = time.perf_counter() - t
    if rollback.state != Rollback.State.APPROVED:
        raise RuntimeError(
            f"rollback #{rollback.pk} is {rollback.state}, not approved (approval gate?)"
        )
    engine.rollback_start(rollback=rollback, actor=admin)
    deadline = time.monotonic() + timeout_s
    while True:
        rollback.refresh_from_db(fields=["state"])
        if rollback.is_terminal:
            break
        if time.monotonic() > deadline:
            done = rollback.steps.filter(state=Step.State.SUCCEEDED).count()
            raise RuntimeError(
                f"rollback #{rollback.pk} still {rollback.state} after {timeout_s} s "
                f"({done} of {rollback.steps.count()} steps succeeded)"
            )
        time.sleep(0.1)
    steps = list(rollback.steps.order_by("stage__index"))
    attempts = {}
    for a in Attempt.objects.filter(step__rollback=rollback).order_by("id"):
        attempts.setdefault(a.step_id, []).append(a)
    outbox = {}
    for o in Outbox.objects.filter(task=engine.RUN_STEP).order_by("id"):
        outbox.setdefault(o.kwargs.get("step_id"), o)
    problems = []
    if rollback.state != Rollback.State.SUCCEEDED:
        problems.append(f"rollback ended {rollback.state}")
    for s in steps:
        if s.state != Step.State.SUCCEEDED or len(attempts.get(s.pk, [])) != 1:
            problems.append(f"step {s.pk}: {s.state}, {len(attempts.get(s.pk, []))} attempts")
    firsts = [attempts[s.pk][0] for s in steps]
    per_step, parts = (
        [],
        {"claim+execute": [], "record→enqueue": [], "commit+publish": [], "broker→claim": []},
    )
    for k in range(1, len(steps)):
        prev, cur, box = firsts[k - 1], firsts[k], outbox.get(steps[k].pk)
        per_step.append((cur.started_at - prev.started_at).total_seconds() * 1000)
        if box is not None and box.sent_at and prev.finished_at:
            parts["claim+execute"].append(
                (prev.finished_at - prev.started_at).total_seconds() * 1000
            )
            parts["record→enqueue"].append(
                (box.created_at - prev.finished_at).total_seconds() * 1000
            )
            parts["commit+publish"].append((box.sent_at - box.created_at).total_seconds() * 1000)
            parts["broker→claim"].append((cur.started_at - box.sent_at).total_seconds() * 1000)
    return {"per_step": per_step, "parts": parts, "plan_s": plan_s, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="N=50 instead of 200")
    ap.add_argument("--n", type=int, help="chain length (overrides --small)")
    ap.add_argument(
        "--worker-settings",
        default="config.settings",
        help="DJANGO_SETTINGS_MODULE of the worker (an experiment, e.g. bench.settings_db_reuse)",
    )
    args = ap.parse_args(argv)
    n = args.n or (50 if args.small else 200)

    with Bench("step_overhead", limit_s=280) as b:
        b.log(f"machine: {machine()}")
        slugs = [f"s{i:03d}" for i in range(n)]
        t = time.perf_counter()
        admin = make_estate(
            slugs, edges=[("before", a, c) for a, c in zip(slugs, slugs[1:], strict=False)]
        )
        warm_slugs = slugs[:5]
        warm_run = report_run(admin, warm_slugs, "warmup")
        run = report_run(admin, slugs, "measured")
        b.log(
            f"estate and runs ({n} systems, chain of before edges) set up in {time.perf_counter() - t:.1f} s"
        )

        worker = b.start_worker(1, name="c1", settings=args.worker_settings)
        b.log(f"worker up (concurrency 1, settings {args.worker_settings})")
        try:
            raw_chain(b, 20, "bench:warm", 30)
            warm = unwind_chain(b, admin, warm_run, 30)
            if warm["problems"]:
                raise RuntimeError(f"warm-up rollback: {warm['problems']}")
            b.log("warm-up done (20 raw hops, 5-stage rollback; not counted)")

            raw1 = raw_chain(b, n, "bench:hops:1", 60)
            b.log(f"raw chain 1: {n} hops")
            u = unwind_chain(b, admin, run, 150)
            b.log(f"unwind chain: {n} stages (planned in {u['plan_s'] * 1000:.0f} ms)")
            raw2 = raw_chain(b, n, "bench:hops:2", 60)
            b.log(f"raw chain 2: {n} hops")
        except Exception:
            print(b.worker_log_tail(worker))
            raise

        raw = raw1 + raw2
        uw = u["per_step"]
        raw_p50, raw_p99 = percentile(raw, 50), percentile(raw, 99)
        uw_p50, uw_p99 = percentile(uw, 50), percentile(uw, 99)
        ratio = uw_p50 / raw_p50
        print()
        print(f"step_overhead  N={n}  worker concurrency 1  settings={args.worker_settings}")
        print(
            f"  raw celery hop   p50 {raw_p50:7.2f} ms  p99 {raw_p99:7.2f} ms  mean {statistics.mean(raw):6.2f}  "
            f"(pooled {len(raw)} hops; chain 1 p50 {percentile(raw1, 50):.2f}, chain 2 p50 {percentile(raw2, 50):.2f})"
        )
        print(
            f"  unwind step      p50 {uw_p50:7.2f} ms  p99 {uw_p99:7.2f} ms  mean {statistics.mean(uw):6.2f}  "
            f"({len(uw)} steps, max {max(uw):.2f})"
        )
        print(
            "  unwind step, where the time goes (p50 / mean ms, from Attempt and Outbox timestamps):"
        )
        for part, xs in u["parts"].items():
            if xs:
                print(f"    {part:15s} {percentile(xs, 50):6.2f} / {statistics.mean(xs):6.2f}")
        print(
            f"  ratio p50 unwind / raw = {ratio:.2f}x   target <= {TARGET_RATIO:.0f}x   "
            f"{'MET' if ratio <= TARGET_RATIO else 'NOT MET'}"
        )
        print(
            f"  p99 unwind = {uw_p99:.2f} ms   target <= {TARGET_P99_MS:.0f} ms   "
            f"{'MET' if uw_p99 <= TARGET_P99_MS else 'NOT MET'}"
        )
        print(f"  machine at the end: {machine()}")
        print(
            f"  checks: {'every step succeeded with exactly one attempt' if not u['problems'] else u['problems'][:5]}"
        )
        return 0 if not u["problems"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
