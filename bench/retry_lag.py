"""How late retries run under load: every step fails once and is retried at its backoff.

    DEBUG=1 flock /tmp/unwind-bench.lock .venv/bin/python -m bench.retry_lag [--rollbacks 100]

The production worker and beat of Procfile.demo (as ``bench.io_drain`` runs them); R
rollbacks of one stage of 10 HTTP steps each, all started at once, against
``bench.http_target``'s ``/flaky/`` path: the first request of each step answers 503 (a
transient error), the second succeeds after 100 ms. Each contract asks for 3 attempts with
a backoff of 0.2 s (equal jitter: the retry is due 0.1–0.2 s after the failure). For each
step, the retry's lateness is the second attempt's ``started_at`` minus the ``retry_at``
the failed attempt's ledger entry recorded; its share of the backoff is that lateness over
(``retry_at`` − the failure). Target (issue 14): retries run within 20 % of their scheduled
time under load.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

from bench._harness import Bench, bulk_runs, machine, make_estate, percentile
from bench.io_drain import Services, in_threads, plan

STEPS = 10
DELAY_MS = 100


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollbacks", type=int, default=100)
    ap.add_argument("--limit", type=int, default=240)
    args = ap.parse_args(argv)

    with Bench("retry_lag", limit_s=args.limit) as b:
        b.log(f"machine: {machine()}")
        _target, base = b.start_target(delay_ms=DELAY_MS)
        from ledger.models import Entry
        from rollbacks import engine, services
        from rollbacks.models import Attempt, Step, System

        slugs = [f"rl{j}" for j in range(STEPS)]
        admin = make_estate(slugs, edges=[])
        action = {
            "compensation": {
                "kind": "http",
                "method": "POST",
                "url": f"{base}/flaky/{{params.id}}",
            },
            "attempts": 3,
            "backoff": {"initial_s": 0.2, "max_s": 0.2},
        }
        for system in System.objects.filter(slug__in=slugs):
            services.contract_publish(system=system, actions={"undo": action}, actor=admin)
        systems = list(System.objects.filter(slug__in=slugs).order_by("slug"))
        rollbacks = plan(
            admin, bulk_runs(admin, "bench-rl", "rl", [systems] * args.rollbacks), "retry lag"
        )
        svc = Services(b)
        svc.start()
        try:
            t0 = time.time()
            in_threads(lambda r: engine.rollback_start(rollback=r, actor=admin), rollbacks)
            b.log(f"{len(rollbacks)} rollbacks started in {time.time() - t0:.1f} s")
            steps = Step.objects.filter(rollback__in=rollbacks)
            deadline = time.monotonic() + args.limit - 60
            while steps.exclude(state=Step.State.SUCCEEDED).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the rollbacks did not finish in time")
                time.sleep(0.25)
            b.log(f"every step succeeded {time.time() - t0:.1f} s after the first start")
        finally:
            svc.stop()

        retry_at = {
            int(e.subject_id): datetime.fromisoformat(e.payload["retry_at"])
            for e in Entry.objects.filter(
                action="step.attempt.failed", rollback_id__in=[r.pk for r in rollbacks]
            )
            if e.payload.get("retry_at")
        }
        firsts = {a.step_id: a for a in Attempt.objects.filter(step__in=steps, number=1)}
        late, share = [], []
        for second in Attempt.objects.filter(step__in=steps, number=2):
            due = retry_at[second.step_id]
            lateness = (second.started_at - due).total_seconds()
            backoff = (due - firsts[second.step_id].finished_at).total_seconds()
            late.append(lateness * 1000)
            share.append(lateness / backoff * 100 if backoff > 0 else 0.0)
        more = Attempt.objects.filter(step__in=steps, number__gt=2).count()
        print()
        print(
            f"retry_lag  {len(rollbacks)} rollbacks × {STEPS} HTTP steps, each failing once "
            "(backoff 0.2 s, equal jitter); production worker (Procfile.demo) + beat"
        )
        print(
            f"  retried steps: {len(late)} of {steps.count()}; steps with a third attempt: {more}"
        )
        print(
            f"  lateness of the retry: p50 {percentile(late, 50):.1f} ms  p95 "
            f"{percentile(late, 95):.1f} ms  max {max(late):.1f} ms"
        )
        print(
            f"  as a share of its backoff: p50 {percentile(share, 50):.1f} %  p95 "
            f"{percentile(share, 95):.1f} %  max {max(share):.1f} %   target <= 20 %: "
            f"{'met' if percentile(share, 95) <= 20 else 'NOT MET'} (p95)"
        )
        print(f"  machine at the end: {machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
