"""Where a running drain's time goes, seen from outside: run it beside ``bench.drain``.

    flock /tmp/unwind-bench.lock sh -c '
        .venv/bin/python -m bench.drain_probe --interval 0.05 > /tmp/probe.txt &
        DEBUG=1 .venv/bin/python -m bench.drain --small; wait'

It waits for the benchmark's database (``unwind_bench_*``), then samples every
``--interval`` seconds, read-only, while any rollback of that database is ``running``
(the window: from the first start to the last finish):

- ``pg_stat_activity`` for every backend of the database: idle, idle in transaction (the
  client holds a transaction open and is busy elsewhere), active on the CPU, or active and
  waiting (``wait_event_type``/``wait_event``: ``Lock`` is a lock wait, ``IO``/``WALSync``
  a commit's flush …). Backends are matched to the Celery worker's pool processes through
  their client sockets (``/proc/<pid>/fd`` and ``/proc/net/tcp``);
- ``pg_locks`` not granted, with the relation, the waiter's and the blocker's query (only
  in a tick whose activity shows a ``Lock`` wait), classed as the rollback's row lock or the
  ledger's chain head by the waiting query;
- the scheduler state of each worker process (``R`` runnable or ``S`` sleeping).

At the ends of the window it reads CPU times (``/proc/<pid>/stat``) of the worker's
processes, their backends, ``redis-server``, every process on the machine grouped by
command (exited children count through their parent) and the whole machine
(``/proc/stat``); ``pg_stat_database`` (commits, without the probe's own statements, and
rows) and the attempts per worker process; and prints per-step figures. Sampling is itself
a client of PostgreSQL (two or three small queries a tick) and uses some CPU (printed); the
machine's load average is printed at both ends. Needs to read other processes' ``/proc``
entries (run it as the user that runs the bench, or root).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg

PG = "host=127.0.0.1 port=5432 user=postgres dbname={db}"
TICK = os.sysconf("SC_CLK_TCK")

ACTIVITY = (
    "SELECT pid, state, coalesce(wait_event_type, ''), coalesce(wait_event, ''), "
    "left(regexp_replace(query, '\\s+', ' ', 'g'), 70), client_port "
    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
WAITS = (
    "SELECT l.pid, l.locktype, coalesce(l.relation::regclass::text, ''), l.mode, "
    "left(regexp_replace(a.query, '\\s+', ' ', 'g'), 70), "
    "(SELECT left(regexp_replace(b.query, '\\s+', ' ', 'g'), 70) FROM pg_stat_activity b "
    " WHERE b.pid = (pg_blocking_pids(l.pid))[1]) "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted"
)
DBSTAT = (
    "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched, "
    "blks_hit + blks_read FROM pg_stat_database WHERE datname = current_database()"
)


def cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def sched_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def machine_cpu() -> list[int]:
    """Jiffies of the whole machine from /proc/stat: user, nice, system, idle, iowait, irq,
    softirq, steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def all_processes() -> dict[int, tuple[str, float]]:
    """pid → (label, CPU seconds of the process plus its reaped children), every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        used = sum(int(f) for f in fields[11:15]) / TICK
        found[int(entry.name)] = (label(cmd or entry.name), used)
    return found


def label(cmd: str) -> str:
    """A process's group for the CPU table: a PostgreSQL backend by its database, Celery
    workers, benchmark drivers, and the first words of anything else."""
    if cmd.startswith("postgres: "):
        m = re.match(r"postgres: \S+ (\S+) (\S+)", cmd)
        if m and m.group(1) == "postgres" and "(" not in cmd:
            return f"postgres: {m.group(1)} {m.group(2)}"  # a background process
        return f"postgres backend, database {m.group(2) if m else '?'}"
    if " celery " in f" {cmd} " or "celery -A" in cmd:
        return "celery worker (any)"
    return " ".join(cmd.split()[:3])[:70]


def pids_matching(pattern: str, env: str = "") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if re.search(pattern, cmd) and (not env or env in (entry / "environ").read_text()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def local_ports(pids: list[int]) -> dict[int, int]:
    """Local TCP port → pid of the process that holds the socket."""
    inode_pid = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = pid
        except OSError:
            continue
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inode_pid:
                ports[int(cols[1].rsplit(":", 1)[1], 16)] = inode_pid[cols[9]]
    return ports


def wait_for_database(timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(PG.format(db="postgres"), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'unwind_bench_%' "
                "ORDER BY oid DESC LIMIT 1"
            ).fetchone()
            if row:
                return row[0]
            time.sleep(0.2)
    raise SystemExit("no unwind_bench_* database appeared")


def running_rollbacks(conn) -> int:
    try:
        return conn.execute(
            "SELECT count(*) FROM rollbacks_rollback WHERE state = 'running'"
        ).fetchone()[0]
    except psycopg.Error:
        return 0  # not migrated yet


class Snapshot:
    """CPU seconds of the processes of interest and the database's counters, at one moment."""

    def __init__(self, conn, worker_pids: list[int]):
        self.t = time.monotonic()
        self.machine = machine_cpu()
        self.load = os.getloadavg()
        self.workers = {pid: cpu_s(pid) or 0.0 for pid in worker_pids}
        self.redis = sum(cpu_s(pid) or 0.0 for pid in pids_matching(r"^redis-server"))
        self.processes = all_processes()
        self.own = sum(os.times()[:2])
        self.db = conn.execute(DBSTAT).fetchone()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    ap.add_argument("--timeout", type=float, default=300, help="give up after this long")
    args = ap.parse_args(argv)
    started = time.monotonic()
    db = wait_for_database(60)
    print(f"probe: database {db}, sampling every {args.interval * 1000:.0f} ms", flush=True)
    conn = psycopg.connect(PG.format(db=db), autocommit=True)

    states: dict[str, Counter] = defaultdict(Counter)  # who → (state, wait) → samples
    sched: dict[int, Counter] = defaultdict(Counter)
    lock_waits: Counter = Counter()
    owner: dict[int, str] = {}  # backend pid → "worker <pid>" / "other"
    backend_pids: dict[int, int] = {}
    first = last = None
    samples = 0
    worker_pids: list[int] = []
    probe_xacts = 0  # this probe's own statements in the database (each one a commit)
    while time.monotonic() - started < args.timeout:
        tick = time.monotonic()
        try:
            running = running_rollbacks(conn)
            probe_xacts += 1
        except psycopg.OperationalError:
            break  # the database was dropped
        if running and first is None:
            worker_pids = [p for p in pids_matching(r"celery .*worker", env=db) if p != os.getpid()]
            first = Snapshot(conn, worker_pids)
            probe_xacts = 0
        if first is not None and not running:
            break
        if first is None:
            time.sleep(args.interval)
            continue
        samples += 1
        rows = conn.execute(ACTIVITY).fetchall()
        probe_xacts += 1
        if any(pid not in owner for pid, *_ in rows):
            ports = local_ports(worker_pids)
            for pid, *_, port in rows:
                if pid not in owner:
                    who = ports.get(port)
                    owner[pid] = f"worker {who}" if who else "other (bench driver: starts)"
                    backend_pids[pid] = who or 0
        for pid, state, wtype, wevent, query, _port in rows:
            if state == "active":
                what = f"active, waiting {wtype}:{wevent}" if wtype else "active (on CPU)"
            else:
                what = state or "?"
            states[owner[pid]][what] += 1
            if state in ("active", "idle in transaction"):
                states[owner[pid]][f"  query: {query}"] += 1
        for pid in worker_pids:
            sched[pid][sched_state(pid)] += 1
        if any(state == "active" and wtype == "Lock" for _, state, wtype, *_ in rows):
            for pid, locktype, rel, mode, query, blocker in conn.execute(WAITS).fetchall():
                lock_waits[(owner.get(pid, "?"), locktype, rel, mode, query, blocker)] += 1
            probe_xacts += 1
        time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
    if first is None:
        print("probe: no rollback ever ran")
        return 1
    last = Snapshot(conn, worker_pids)
    # Backends' CPU: read now (they are still connected) for the whole life of the backend
    # (a worker's backend connects with its first step, inside the window).
    backend_cpu = {pid: cpu_s(pid) or 0.0 for pid in backend_pids}
    attempts = conn.execute("SELECT worker, count(*) FROM rollbacks_attempt GROUP BY worker")
    attempts = dict(attempts.fetchall())
    steps = conn.execute("SELECT count(*) FROM rollbacks_step WHERE state = 'succeeded'")
    steps = steps.fetchone()[0]
    probe_xacts += 1  # the last Snapshot's
    conn.close()
    report(first, last, steps, samples, worker_pids, backend_pids, backend_cpu, probe_xacts)
    report_samples(states, sched, lock_waits, samples, worker_pids, attempts, first, last)
    return 0


def report(first, last, steps, samples, worker_pids, backend_pids, backend_cpu, probe_xacts):
    wall = last.t - first.t
    jiffies = [b - a for a, b in zip(first.machine, last.machine, strict=True)]
    total = sum(jiffies)
    busy = (total - jiffies[3] - jiffies[4]) / TICK
    split = ", ".join(
        f"{name} {j / total * 100:.0f}%"
        for name, j in zip(
            ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"),
            jiffies,
            strict=True,
        )
        if j
    )
    per_step = 1000 / max(steps, 1)
    print(f"\nprobe  window {wall:.1f} s (rollbacks running), {samples} samples, {steps} steps")
    print(f"  load average at start {first.load[0]:.1f}, at end {last.load[0]:.1f}")
    print(
        f"  machine: {busy:.1f} CPU-s busy of {total / TICK:.1f} ({split}) "
        f"= {busy * per_step:.1f} ms of CPU per succeeded step"
    )
    print("  CPU in the window (s; ms per succeeded step):")
    for pid in worker_pids:
        used = last.workers[pid] - first.workers[pid]
        print(f"    worker process {pid}: {used:6.2f} s  {used * per_step:6.2f} ms/step")
    wk = sum(last.workers[p] - first.workers[p] for p in worker_pids)
    bk_w = sum(c for pid, c in backend_cpu.items() if backend_pids[pid])
    bk_o = sum(c for pid, c in backend_cpu.items() if not backend_pids[pid])
    rd = last.redis - first.redis
    print(f"    all worker processes: {wk:6.2f} s  {wk * per_step:6.2f} ms/step")
    print(f"    their PostgreSQL backends: {bk_w:6.2f} s  {bk_w * per_step:6.2f} ms/step")
    print(f"    the driver's backends still connected at the end: {bk_o:6.2f} s")
    print(f"    redis-server: {rd:6.2f} s  {rd * per_step:6.2f} ms/step")
    print(f"    this probe (Python only): {last.own - first.own:6.2f} s")
    groups: Counter = Counter()
    for pid, (name, used) in last.processes.items():
        before = first.processes.get(pid)
        groups[name] += used - (before[1] if before and before[0] == name else 0.0)
    print(
        "  every process on the machine, grouped (CPU-s in the window, reaped children included):"
    )
    for name, used in groups.most_common(12):
        if used >= 0.05:
            print(f"    {used:6.2f}  {name}")
    d = [b - a for a, b in zip(first.db, last.db, strict=True)]
    commits = d[0] - probe_xacts
    print(
        f"  database: {commits} commits without the probe's {probe_xacts} "
        f"({commits * per_step / 1000:.2f}/step), {d[1]} rollbacks, {d[2]} rows inserted "
        f"({d[2] * per_step / 1000:.1f}/step), {d[3]} updated ({d[3] * per_step / 1000:.1f}/step), "
        f"{d[4]} fetched, {d[5]} buffer accesses"
    )


def report_samples(states, sched, lock_waits, samples, worker_pids, attempts, first, last):
    wall = last.t - first.t
    print(f"  attempts by worker process: {attempts}")
    for pid in worker_pids:
        n = sum(sched[pid].values())
        if not n:
            continue
        shares = ", ".join(f"{k} {v / n * 100:.0f}%" for k, v in sched[pid].most_common())
        done = sum(v for k, v in attempts.items() if k.endswith(f":{pid}"))
        line = f"  scheduler state of {pid}: {shares}"
        if done:
            cpu = (last.workers[pid] - first.workers[pid]) / done * 1000
            runnable = sched[pid]["R"] / n * wall / done * 1000
            line += (
                f"; per step: wall {wall / done * 1000:.1f} ms, CPU {cpu:.1f} ms, runnable but "
                f"not running ≈ {max(runnable - cpu, 0):.1f} ms, sleeping ≈ "
                f"{wall / done * 1000 - runnable:.1f} ms"
            )
        print(line)
    for who, counter in sorted(states.items()):
        n = sum(v for k, v in counter.items() if not k.startswith(" "))
        print(f"  {who}: {n} backend-samples")
        for what, v in counter.most_common():
            if what.startswith(" ") and v < n * 0.02:
                continue
            print(f"    {v / n * 100:5.1f}%  {what}")
    kinds: Counter = Counter()
    for (_who, _locktype, _rel, _mode, query, _blocker), v in lock_waits.items():
        if "FOR UPDATE" in query or query.startswith('SELECT "rollbacks_rollback"'):
            kinds["the rollback's row lock (select_for_update)"] += v
        elif query.startswith("WITH held"):
            kinds["the ledger's chain head (record)"] += v
        else:
            kinds[f"other: {query[:50]}"] += v
    n_waits = sum(lock_waits.values())
    print(f"  ungranted locks: {n_waits} lock-samples over {samples} samples: {dict(kinds)}")
    for (who, locktype, rel, mode, query, blocker), v in lock_waits.most_common(6):
        print(f"    {v:5d}  {who}: {locktype} {rel} {mode}\n           waits: {query}")
        print(f"           behind: {blocker}")


if __name__ == "__main__":
    raise SystemExit(main())
