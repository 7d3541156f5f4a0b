"""Recovery in seconds (SPEC §6, last row; issue 14): a worker SIGKILLed mid-step, the broker
restarted empty mid-rollback.

    DEBUG=1 .venv/bin/python -m bench.recovery [--limit S]

Everything runs on a private ``redis-server`` the benchmark starts on a free loopback port
(in memory only, as tests/rollbacks/test_restarts.py does), so that killing it touches
nobody else, and a throwaway PostgreSQL database (bench/_harness.py). Processes are the
production ones of Procfile.demo: two ``worker:`` processes A and B (concurrency 2 each)
and ``beat:`` (the sweeper every ``SWEEP_INTERVAL_S``). A supervisor thread starts any of
them again as soon as it exits, as docker-compose (``restart: unless-stopped``) or systemd
(``Restart=always``) do. The target (``bench/http_target.py``, its own process) answers
every step's ``POST /undo/<id>`` after 2 s and counts requests per ``Idempotency-Key``.

(a) **Worker killed.** 8 rollbacks of one stage of 4 parallel HTTP steps (32 steps, 2 s
    each, 4 pool processes: a backlog). Once worker A has 2 steps in flight (attempts
    running, told by the process ids of A's group in ``Attempt.worker``, whose request the
    target has received), its whole process group
    is SIGKILLed; the supervisor starts it again at once, and B goes on. Measured for each
    step A had in flight: kill → ``started_at`` of that step's next attempt. Target ≤ 5 s.
(b) **Redis restarted empty.** 6 rollbacks of 3 stages of 2 steps (a chain of 3 systems,
    2 actions on each), so that stages keep starting during and after the outage whatever
    the number of steps a worker keeps in flight. Once steps are in flight, the private
    Redis is SIGKILLed (every queued and unacknowledged message goes with it), kept down
    3 s, and started again empty on the same port. Measured: the moment it answers PING
    again → ``started_at`` of the first attempt that starts after it, and of the last of
    the rollbacks' first attempts after it (every rollback with a step to start has
    started one). Target ≤ 5 s.
(c) **Re-sends of queued work**: the sweeper's results during (a) and (b), read from the
    workers' logs (Celery logs each ``rollbacks.tasks.sweep`` result at INFO, the production
    level). In (a) Redis lost nothing, so every step the sweeper ``redispatched`` was still
    waiting in the broker (queued work sent again); ``expired`` counts leases it took back.
    Also: the requests the target received more than once per key, beyond the killed steps.

Checks: every rollback succeeds; no step has two succeeded attempts; every step's key
reached the target. Each part is time-boxed (90 s) and the whole run stops within
``--limit`` (290 s); clean-up (processes, Redis, database) always runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from bench._harness import Bench, machine, percentile
from bench.io_drain import make_io_estate, plan, sweep_counts, sweeps_in, target_stats

STEPS = 4
DELAY_MS = 2000
TARGET_S = 5.0
BOX_S = 90.0
REDIS_DOWN_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """``redis-server`` on a free loopback port, no persistence: a restart starts empty."""

    def __init__(self, workdir: Path):
        self.port, self.dir, self.proc = free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ping(self, timeout: float = 20.0) -> float:
        """time.time() of the first PING it answers."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return time.time()
            except redis.RedisError:
                time.sleep(0.01)
        raise RuntimeError(f"the private Redis did not answer within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


class Supervisor:
    """Starts each process again at once when it exits, as docker-compose or systemd would."""

    def __init__(self, b: Bench):
        self.b, self.procs, self.starters = b, {}, {}
        self.restarts: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def add(self, name: str, start, proc) -> None:
        self.procs[name], self.starters[name] = proc, start

    def _watch(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        self.restarts.append((name, time.time()))
                        self.procs[name] = self.starters[name]()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)


def group_pids(pgid: int) -> set[int]:
    """Every process of a process group (the worker and its pool children)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.add(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def attempt_pid(worker: str) -> int | None:
    m = re.search(r":(\d+)$", worker or "")
    return int(m.group(1)) if m else None


def log_offsets_now(b: Bench) -> dict:
    return {p: p.stat().st_size for p in b.workdir.glob("worker-*.log")}


def sweeps_since(b: Bench, offsets: dict) -> dict:
    return sweeps_in([(p, offsets.get(p, 0)) for p in b.workdir.glob("worker-*.log")])


def wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def start(b: Bench, admin, rollbacks) -> None:
    from bench.drain import in_threads
    from rollbacks import engine

    in_threads(lambda r: engine.rollback_start(rollback=r, actor=admin), rollbacks)


def wait_finished(rollbacks, timeout: float) -> bool:
    from rollbacks.models import Rollback

    ids = [r.pk for r in rollbacks]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Rollback.objects.filter(pk__in=ids, state__in=Rollback.TERMINAL).count() == len(ids):
            return True
        time.sleep(0.2)
    return False


def checks(base: str, rollbacks, killed_steps: set[int]) -> dict:
    """Outcome, duplicate and lost checks for these rollbacks."""
    from django.db.models import Count, Q

    from rollbacks.models import Rollback, Step

    ids = [r.pk for r in rollbacks]
    steps = Step.objects.filter(rollback_id__in=ids)
    calls = target_stats(base)["calls"]
    keys = list(steps.values_list("pk", "idempotency_key"))
    return {
        "states": dict(
            Rollback.objects.filter(pk__in=ids).values_list("state").annotate(n=Count("id"))
        ),
        "dup_attempts": steps.annotate(
            ok=Count("attempt_set", filter=Q(attempt_set__outcome="succeeded"))
        )
        .filter(ok__gt=1)
        .count(),
        "unseen": sum(1 for _, k in keys if k not in calls),
        "resent": sum(1 for pk, k in keys if calls.get(k, 0) > 1 and pk not in killed_steps),
        "killed_resent": sum(1 for pk, k in keys if calls.get(k, 0) > 1 and pk in killed_steps),
    }


def part_worker_kill(b: Bench, sup: Supervisor, admin, base: str, rollbacks) -> dict:
    from rollbacks.models import Attempt

    offsets = log_offsets_now(b)
    ids = [r.pk for r in rollbacks]
    running = Attempt.objects.filter(step__rollback_id__in=ids, outcome=Attempt.Outcome.RUNNING)
    start(b, admin, rollbacks)
    worker_a = sup.procs["A"]

    t_started = time.monotonic()

    def a_in_flight():
        """(HTTP calls in flight, those of them on A) once A has 2, or after 15 s with 3 or
        more in flight, if ``Attempt.worker`` names no process of A's group."""
        from datetime import timedelta

        from django.utils import timezone

        old = timezone.now() - timedelta(seconds=0.3)
        rows = list(
            running.filter(started_at__lte=old).values(
                "id", "step_id", "worker", "step__idempotency_key"
            )
        )
        calls = target_stats(base)["calls"] if rows else {}
        live = [r for r in rows if r["step__idempotency_key"] in calls]
        a_pids = group_pids(worker_a.pid)
        mine = [r for r in live if attempt_pid(r["worker"]) in a_pids]
        if len(mine) >= 2 or (len(live) >= 3 and time.monotonic() - t_started > 15):
            return live, mine
        return None

    live, mine = wait_until(a_in_flight, 60, "worker A to have 2 HTTP calls in flight")
    a_group = group_pids(worker_a.pid)
    with sup.lock:
        t_kill = time.time()
        os.killpg(worker_a.pid, signal.SIGKILL)
        worker_a.wait(timeout=10)
    b.log(
        f"(a) worker A SIGKILLed (process group {worker_a.pid}) with {len(mine)} HTTP calls in "
        f"flight; {len(live)} in flight on A and B"
    )

    def first_reruns(killed: dict) -> dict:
        """step → started_at of its first attempt after the killed one."""
        return dict(
            Attempt.objects.filter(step_id__in=killed)
            .exclude(id__in=killed.values())
            .order_by("-started_at")
            .values_list("step_id", "started_at")
        )

    if mine:
        # Every attempt A had running when it died (an execution loop holds several, some
        # not yet at the target), not only the calls the target had seen.
        a_pids = a_group | {attempt_pid(r["worker"]) for r in mine}
        killed = {
            r["step_id"]: r["id"]
            for r in running.values("id", "step_id", "worker")
            if attempt_pid(r["worker"]) in a_pids
        } or {r["step_id"]: r["id"] for r in mine}
        try:
            later = wait_until(
                lambda: (x := first_reruns(killed)) and len(x) == len(killed) and x,
                BOX_S,
                "the killed steps to run again",
            )
        except RuntimeError:
            later = first_reruns(killed)
        finished = wait_finished(rollbacks, BOX_S)
    else:  # A's steps told apart afterwards: the calls in flight whose attempt did not succeed
        finished = wait_finished(rollbacks, BOX_S)
        killed = dict(
            Attempt.objects.filter(id__in=[r["id"] for r in live])
            .exclude(outcome=Attempt.Outcome.SUCCEEDED)
            .values_list("step_id", "id")
        )
        later = first_reruns(killed)
    delays = [later[s].timestamp() - t_kill for s in killed if s in later]
    restart = next((t for name, t in sup.restarts if name == "A" and t >= t_kill), None)
    return {
        "killed": len(killed),
        "rerun": len(delays),
        "delays": delays,
        "finished": finished,
        "restart_s": (restart - t_kill) if restart else None,
        "sweep": sweeps_since(b, offsets),
        **checks(base, rollbacks, set(killed)),
    }


def part_redis_restart(b: Bench, sup: Supervisor, redis_srv: PrivateRedis, admin, base, rollbacks):
    from django.db.models import Q

    from rollbacks.models import Attempt, Rollback

    offsets = log_offsets_now(b)
    ids = [r.pk for r in rollbacks]
    attempts = Attempt.objects.filter(step__rollback_id__in=ids)
    start(b, admin, rollbacks)
    wait_until(
        lambda: attempts.filter(outcome=Attempt.Outcome.RUNNING).count() >= 2,
        60,
        "steps in flight",
    )
    time.sleep(0.3)
    restarts_before = len(sup.restarts)
    t_kill = time.time()
    redis_srv.kill()
    b.log(f"(b) Redis SIGKILLed; down for {REDIS_DOWN_S:.0f} s")
    time.sleep(REDIS_DOWN_S)
    redis_srv.start()
    t_ping = redis_srv.wait_ping()
    b.log(f"(b) Redis answers PING again {t_ping - t_kill:.1f} s after the kill (empty)")
    from datetime import UTC, datetime

    ping_at = datetime.fromtimestamp(t_ping, UTC)
    during = attempts.filter(started_at__gte=datetime.fromtimestamp(t_kill, UTC)).filter(
        started_at__lt=ping_at
    )
    during_n = during.count()

    def first_after():
        first = attempts.filter(started_at__gte=ping_at).order_by("started_at").first()
        if first is None and Rollback.objects.filter(pk__in=ids, finished_at__isnull=True).exists():
            return None
        return first or "nothing left"

    try:
        first = wait_until(first_after, BOX_S, "an attempt after Redis came back")
        first_s = None if first == "nothing left" else first.started_at.timestamp() - t_ping
    except RuntimeError:
        first_s = None
    finished = wait_finished(rollbacks, BOX_S)
    unfinished_at_ping = (
        Rollback.objects.filter(pk__in=ids)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gt=ping_at))
        .count()
    )
    # Every rollback that had a step left to start at the ping: when its first attempt
    # after the ping started.
    per_rollback = {}
    for rid, st in attempts.filter(started_at__gte=ping_at).values_list(
        "step__rollback_id", "started_at"
    ):
        per_rollback[rid] = min(per_rollback.get(rid, st), st)
    all_s = max((t.timestamp() - t_ping for t in per_rollback.values()), default=None)
    return {
        "down_s": t_ping - t_kill,
        "first_s": first_s,
        "all_s": all_s,
        "resumed_rollbacks": len(per_rollback),
        "unfinished_at_ping": unfinished_at_ping,
        "during": during_n,
        "finished": finished,
        "worker_restarts": [
            (name, round(t - t_kill, 1)) for name, t in sup.restarts[restarts_before:]
        ],
        "sweep": sweeps_since(b, offsets),
        **checks(base, rollbacks, set()),
    }


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=290, help="hard time limit of the whole run (s)")
    args = ap.parse_args(argv)
    import tempfile

    redis_dir = Path(tempfile.mkdtemp(prefix="unwind-bench-recovery-redis-"))
    redis_srv = PrivateRedis(redis_dir)
    redis_srv.start()
    try:
        redis_srv.wait_ping()
        with Bench("recovery", limit_s=args.limit, redis_url=redis_srv.url) as b:
            sup = Supervisor(b)
            try:
                return run(b, sup, redis_srv)
            finally:
                sup.close()  # before the harness stops the processes it would restart
    finally:
        redis_srv.kill()
        shutil.rmtree(redis_dir, ignore_errors=True)


def run(b: Bench, sup: Supervisor, redis_srv: PrivateRedis) -> int:
    b.log(f"machine: {machine()}; private Redis on port {redis_srv.port}")
    _target, base = b.start_target(delay_ms=DELAY_MS)
    slugs = [f"rc{j}" for j in range(STEPS)]
    chain = [f"rb{j}" for j in range(3)]
    edges = [("before", a, c) for a, c in zip(chain, chain[1:], strict=False)]
    admin = make_io_estate([*slugs, *chain], base, edges)
    from bench._harness import bulk_runs
    from rollbacks.models import System

    systems = list(System.objects.filter(slug__in=slugs).order_by("slug"))
    staged = [s for s in System.objects.filter(slug__in=chain).order_by("slug") for _ in (1, 2)]
    rb_a = plan(admin, bulk_runs(admin, "bench-rec-a", "rec-a", [systems] * 8), "kill")
    rb_b = plan(admin, bulk_runs(admin, "bench-rec-b", "rec-b", [staged] * 6), "redis")
    b.log(
        f"(a) 8 rollbacks of {rb_a[0].stages.count()} stage × {STEPS} steps, "
        f"(b) 6 rollbacks of {rb_b[0].stages.count()} stages × 2 steps planned"
    )
    for name in ("A", "B"):
        sup.add(
            name,
            lambda name=name: b.start_production_worker(name=name, wait=False),
            b.start_production_worker(name=name),
        )
    sup.add("beat", lambda: b.start_production_beat(), b.start_production_beat())
    sup.thread.start()
    b.log("workers A and B (Procfile.demo, concurrency 2 each) and beat up, supervised")

    a = part_worker_kill(b, sup, admin, base, rb_a)
    b.log(f"(a) done: {a['rerun']} of {a['killed']} killed steps ran again")
    r = part_redis_restart(b, sup, redis_srv, admin, base, rb_b)
    b.log("(b) done")

    print()
    print(
        f"recovery  target answers in {DELAY_MS / 1000:.0f} s; production workers A, B "
        "(Procfile.demo, concurrency 2) + beat, supervised; private Redis"
    )
    d = a["delays"]
    met_a = bool(d) and len(d) == a["killed"] and max(d) <= TARGET_S
    print(
        f"  (a) worker A SIGKILLed with {a['killed']} steps in flight: their next attempt "
        f"started {', '.join(f'{x:.1f}' for x in sorted(d))} s after the kill "
        f"(p50 {fmt(percentile(d, 50) if d else None)}, max {fmt(max(d) if d else None)}; "
        f"{a['rerun']} of {a['killed']} within {BOX_S:.0f} s)   target <= {TARGET_S:.0f} s   "
        f"{'MET' if met_a else 'NOT MET'}"
    )
    print(
        f"      supervisor restarted A {fmt(a['restart_s'])} after the kill; rollbacks "
        f"{a['states']}{'' if a['finished'] else ' (not all finished in the box)'}"
    )
    met_b = r["all_s"] is not None and r["all_s"] <= TARGET_S
    print(
        f"  (b) Redis SIGKILLed, back empty {r['down_s']:.1f} s later, "
        f"{r['unfinished_at_ping']} of {len(rb_b)} rollbacks unfinished then: first attempt "
        f"{fmt(r['first_s'])} after it answered PING; each of the {r['resumed_rollbacks']} "
        f"rollbacks that started a step after it had by {fmt(r['all_s'])}   "
        f"target <= {TARGET_S:.0f} s   "
        + (
            ("MET" if met_b else "NOT MET")
            if r["unfinished_at_ping"]
            else "NOT MEASURED (every rollback had finished by then)"
        )
    )
    print(
        f"      attempts started while Redis was down: {r['during']}; worker restarts "
        f"(name, s after the kill): {r['worker_restarts'] or 'none'}; rollbacks "
        f"{r['states']}{'' if r['finished'] else ' (not all finished in the box)'}"
    )
    for label, part in (("(a)", a), ("(b)", r)):
        sw = part["sweep"]
        print(
            f"  (c) sweeper during {label}: {sw.get('sweeps', 0)} sweeps, "
            + sweep_counts(sw)
            + f"; keys the target received twice, beyond the killed steps: {part['resent']}"
            + (f" (killed steps sent again: {part['killed_resent']})" if label == "(a)" else "")
        )
    ok = all(p["dup_attempts"] == 0 and p["unseen"] == 0 and p["finished"] for p in (a, r))
    print(f"  machine at the end: {machine()}")
    print(
        "  checks: "
        + (
            "every rollback finished, 0 lost, 0 duplicate effects"
            if ok
            else f"FAILED: (a) {a['states']} dup {a['dup_attempts']} unseen {a['unseen']}; "
            f"(b) {r['states']} dup {r['dup_attempts']} unseen {r['unseen']}"
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
