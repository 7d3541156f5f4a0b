"""The ledger against its baselines, in one run (SPEC §6: export, append, verification).

    DEBUG=1 .venv/bin/python -m bench.ledger_bench [--small] [--writers 8] [--append-s 8]

On a throwaway PostgreSQL database (created here, dropped at the end, whatever happens; no
Redis, no Celery):

1. Setup, not measured: N entries (1,000,000; 100,000 with ``--small``) in 10,000 rollback
   chains plus the global chain, hashed in Python and loaded with COPY; their chain heads;
   one signed checkpoint.
2. Export: ``export_stream`` (JSON Lines, then CSV) of the first N/10 and of all N entries,
   each in a fresh subprocess that writes the file to /dev/null, so that its memory is the
   export's alone: resident memory (VmRSS) sampled during the export, and ``ru_maxrss``.
   Target: peak at N ≤ 1.2 × peak at N/10. Baseline:
   ``COPY (SELECT <every column> … ORDER BY id) TO STDOUT`` of the same N rows, read by a
   subprocess with psycopg. Target: export rate ≥ 0.2 × COPY rate.
3. Append: W processes (8), each with its own connection, append for ``--append-s``
   seconds, one transaction per entry, each to its own rollback through ``record()``;
   then the same W processes run plain single-row INSERTs of the same values into a copy of
   ``ledger_entry`` (same columns and indexes; no triggers, chains or hashes): first one
   transaction each (BEGIN; INSERT; COMMIT, the shape record() is called in), then in
   autocommit (one round trip, the stricter baseline). Target: ≥ 0.25 ×.
4. Verification: ``verify()`` of the whole ledger (N entries + the appends) with one
   connection and with the default two, entries per second. Target: ≥ 200,000/s. Also the
   CPU it cost per entry, in this process and in its PostgreSQL backends (read from
   /proc: PostgreSQL runs on this machine), which does not depend on what else the
   machine is running: two idle cores give at most 2 s / (CPU per entry); and its rate
   against the COPY rate of step 2 (the same rows read by PostgreSQL's fastest path, in
   the same run, so under the same load).

Runs with settings.DEBUG off (no query log), like production.

Every phase is bounded (a hard ``alarm`` for the whole run, a deadline per subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
CHAINS = 10_000
BASE_AT = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
LIMIT_S = 900
COLUMNS = (
    "id, chain, seq, prev_hash, hash, at, actor, actor_user_id, action, subject_type, "
    "subject_id, rollback_id, reason, outcome, trace_id, payload"
)


class Timeout(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> str:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load}; PostgreSQL {pg}, loopback"


def django_setup(database_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    from django.conf import settings

    # Production-like: no debug cursor logging every query (it would tax record(), which
    # makes more queries than a plain INSERT, more than the baseline).
    settings.DEBUG = False


# 1. Setup ---------------------------------------------------------------------------------------


def at_of(i: int) -> datetime.datetime:
    return BASE_AT + datetime.timedelta(microseconds=i)


def load(n: int) -> None:
    """N chained entries through COPY (record() would take minutes; it is measured in 3)."""
    from django.db import connection

    from ledger.canonical import GENESIS, entry_hash
    from ledger.models import ChainHead

    heads: dict[str, tuple[int, str]] = {}
    actions = ("step.attempt.started", "step.attempt.succeeded", "stage.started", "rollback.start")
    started = time.monotonic()
    with connection.cursor() as cursor:
        raw = cursor.connection
        with raw.cursor().copy(f"COPY ledger_entry ({COLUMNS}) FROM STDIN") as copy:
            for i in range(1, n + 1):
                rollback = None if i % 20 == 0 else i % CHAINS + 1
                chain = "global" if rollback is None else f"rollback:{rollback}"
                seq, prev = heads.get(chain, (0, GENESIS))
                row = {
                    "id": i,
                    "chain": chain,
                    "seq": seq + 1,
                    "prev_hash": prev,
                    "at": at_of(i),
                    "actor": "worker" if i % 3 else "user:alice",
                    "actor_user_id": None,
                    "action": actions[i % 4],
                    "subject_type": "step",
                    "subject_id": str(i // 3),
                    "rollback_id": rollback,
                    "reason": "" if i % 7 else "operator retried after the timeout",
                    "outcome": "ok" if i % 11 else "failed",
                    "trace_id": f"{i:032x}",
                    "payload": {
                        "system": f"system-{i % 13}",
                        "attempt": i % 3 + 1,
                        "to": "running",
                    },
                }
                digest = entry_hash(row)
                heads[chain] = (seq + 1, digest)
                copy.write_row(
                    (
                        i,
                        chain,
                        seq + 1,
                        prev,
                        digest,
                        row["at"],
                        row["actor"],
                        None,
                        row["action"],
                        "step",
                        row["subject_id"],
                        rollback,
                        row["reason"],
                        row["outcome"],
                        row["trace_id"],
                        json.dumps(row["payload"]),
                    )
                )
        ChainHead.objects.bulk_create(
            [ChainHead(chain=c, seq=s, hash=h) for c, (s, h) in heads.items()], batch_size=5000
        )
        cursor.execute("SELECT setval(pg_get_serial_sequence('ledger_entry', 'id'), %s)", [n])
        cursor.execute("ANALYZE ledger_entry")
    log(f"loaded {n:,} entries in {len(heads):,} chains in {time.monotonic() - started:.0f} s")


# 2. Export ---------------------------------------------------------------------------------------


def rss_kb() -> int:
    """The process's resident memory now (VmRSS), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child_export(n: int, fmt: str) -> dict:
    """In a fresh process: export the first n entries to /dev/null; time, and resident
    memory before and at its highest during the export (sampled every 16 chunks)."""
    from ledger.canonical import format_at
    from ledger.exports import export_create, export_stream

    export = export_create(actor="bench", format=fmt, filters={"to": format_at(at_of(n + 1))})
    before = peak = rss_kb()
    started = time.perf_counter()
    size = 0
    with open(os.devnull, "wb") as sink:
        for i, chunk in enumerate(export_stream(export)):
            sink.write(chunk)
            size += len(chunk)
            if i % 16 == 0:
                peak = max(peak, rss_kb())
    seconds = time.perf_counter() - started
    peak = max(peak, rss_kb())
    export.refresh_from_db()
    count = export.manifest["manifest"]["count"]
    return {
        "count": count,
        "seconds": seconds,
        "bytes": size,
        "rss_kb": peak,
        "rss_before_kb": before,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def child_copy(n: int) -> dict:
    """In a fresh process: COPY the same rows to STDOUT and read them all."""
    from django.db import connection

    sql = f"COPY (SELECT {COLUMNS} FROM ledger_entry WHERE at < %s ORDER BY id) TO STDOUT"
    started = time.perf_counter()
    size = 0
    with (
        connection.cursor() as cursor,
        cursor.connection.cursor().copy(sql, [at_of(n + 1)]) as copy,
    ):
        for block in copy:
            size += len(block)
    return {"count": n, "seconds": time.perf_counter() - started, "bytes": size}


def run_child(database_url: str, env_key: str, args: list[str], timeout: int = 300) -> dict:
    env = os.environ | {"DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": env_key, "DEBUG": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.ledger_bench", "--child", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# 3. Append ----------------------------------------------------------------------------------------


def _writer(kind: str, index: int, seconds: float, barrier, counts) -> None:
    from django.db import connection, transaction

    from ledger.services import record

    connection.close()  # never share the parent's connection
    # A rollback (and chain) of its own per writer and per run.
    rollback_id = {"record": 1_000_000, "plain-tx": 2_000_000, "plain": 3_000_000}[kind] + index
    payload = {"system": "system-1", "attempt": 1, "to": "running"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    barrier.wait(timeout=60)
    deadline = time.monotonic() + seconds
    done = 0
    if kind == "record":
        while time.monotonic() < deadline:
            with transaction.atomic():
                record(
                    actor="worker",
                    action="step.attempt.succeeded",
                    subject_type="step",
                    subject_id=done,
                    rollback_id=rollback_id,
                    payload=payload,
                )
            done += 1
    else:
        in_transaction = kind == "plain-tx"
        sql = (
            "INSERT INTO bench_plain (chain, seq, prev_hash, hash, at, actor, action, "
            "subject_type, subject_id, rollback_id, reason, outcome, trace_id, payload) "
            "VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s, %s, '', 'ok', %s, %s)"
        )
        text = json.dumps(payload)
        chain = f"rollback:{rollback_id}"
        while time.monotonic() < deadline:
            params = [
                chain,
                done,
                secrets.token_hex(32),
                secrets.token_hex(32),
                "worker",
                "step.attempt.succeeded",
                "step",
                str(done),
                rollback_id,
                secrets.token_hex(16),
                text,
            ]
            if in_transaction:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(sql, params)
            else:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
            done += 1
    counts[index] = done
    connection.close()


def appends(kind: str, writers: int, seconds: float) -> float:
    from django.db import connections

    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers)
    counts = ctx.Array("l", writers)
    procs = [
        ctx.Process(target=_writer, args=(kind, i, seconds, barrier, counts))
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=seconds + 120)
        if proc.is_alive():
            proc.kill()
            raise RuntimeError(f"{kind} writer did not finish")
        if proc.exitcode != 0:
            raise RuntimeError(f"{kind} writer failed with exit code {proc.exitcode}")
    return sum(counts) / seconds


# 4. Verification ------------------------------------------------------------------------------------


def _backend_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of these local processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def measured_verify(database: str, **kwargs):
    """``verify(**kwargs)`` and the CPU seconds it cost: this process, and the PostgreSQL
    backends of the database (sampled every 0.1 s from pg_stat_activity while it runs, so
    that the backends of the fetching connections, gone when it ends, are counted)."""
    import psycopg

    from ledger.verification import verify

    seen: dict[int, float] = {}
    stop = threading.Event()
    with psycopg.connect(
        PG.replace("dbname=postgres", f"dbname={database}"), autocommit=True
    ) as conn:
        own = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s"
        before = _backend_cpu([r[0] for r in conn.execute(sql, [own])])

        def sample() -> None:
            while not stop.wait(0.1):
                pids = [r[0] for r in conn.execute(sql, [own])]
                seen.update(_backend_cpu(pids))

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.process_time()
        sampler.start()
        try:
            result = verify(**kwargs)
        finally:
            stop.set()
            sampler.join(timeout=5)
        python = time.process_time() - started
    database_cpu = sum(cpu - before.get(pid, 0.0) for pid, cpu in seen.items())
    return result, python, database_cpu


# Main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="100,000 entries instead of 1,000,000")
    parser.add_argument("--entries", type=int, help="override the number of entries")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--append-s", type=float, default=8.0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        django_setup(os.environ["DATABASE_URL"])
        what, *rest = args.child
        result = (
            child_export(int(rest[0]), rest[1]) if what == "export" else child_copy(int(rest[0]))
        )
        print(json.dumps(result))
        return 0

    n = args.entries or (100_000 if args.small else 1_000_000)
    import psycopg

    db = f"unwind_ledger_bench_{secrets.token_hex(4)}"
    database_url = f"postgres://postgres@127.0.0.1:5432/{db}"

    def alarm(signum, frame):  # noqa: ARG001
        raise Timeout(f"the benchmark ran past its hard limit of {LIMIT_S} s")

    signal.signal(signal.SIGALRM, alarm)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit("stopped"))
    signal.alarm(LIMIT_S)
    log(f"machine: {machine()}")
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        from ledger.signing import generate_key_b64

        key = generate_key_b64()
        os.environ["LEDGER_SIGNING_KEY"] = key
        django_setup(database_url)
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        log(f"database {db} migrated")
        return run(n, args, database_url, key)
    finally:
        signal.alarm(0)
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        log(f"database {db} dropped")


def run(n: int, args, database_url: str, key: str) -> int:
    from django.db import connection

    from ledger.checkpoints import checkpoint_take

    load(n)
    started = time.monotonic()
    checkpoint = checkpoint_take()
    log(
        f"checkpoint of {checkpoint.chain_count:,} chains taken in {time.monotonic() - started:.1f} s"
    )
    connection.close()

    small = n // 10
    figures: dict[str, dict] = {}
    for fmt in ("jsonl", "csv"):
        for size in (small, n):
            figures[f"{fmt}-{size}"] = r = run_child(database_url, key, ["export", str(size), fmt])
            log(
                f"export {fmt:5} {r['count']:>9,} entries: {r['count'] / r['seconds']:>9,.0f}/s, "
                f"{r['bytes'] / 1e6:,.0f} MB, RSS {r['rss_before_kb'] / 1024:,.1f} MiB before, "
                f"{r['rss_kb'] / 1024:,.1f} MiB at most during the export "
                f"(ru_maxrss {r['maxrss_kb'] / 1024:,.1f} MiB)"
            )
    copy = run_child(database_url, key, ["copy", str(n)])
    copy_rate = copy["count"] / copy["seconds"]
    log(f"COPY TO STDOUT {n:,} rows: {copy_rate:,.0f}/s, {copy['bytes'] / 1e6:,.0f} MB")

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_plain (LIKE ledger_entry INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING INDEXES)"
        )
    connection.close()
    record_rate = appends("record", args.writers, args.append_s)
    log(
        f"append via record(), {args.writers} writers on {args.writers} rollbacks: {record_rate:,.0f}/s"
    )
    plain_rate = appends("plain-tx", args.writers, args.append_s)
    log(
        f"plain INSERT, one transaction each (BEGIN; INSERT; COMMIT), {args.writers} writers: {plain_rate:,.0f}/s"
    )
    autocommit_rate = appends("plain", args.writers, args.append_s)
    log(f"plain INSERT, autocommit, {args.writers} writers: {autocommit_rate:,.0f}/s")

    database = connection.settings_dict["NAME"]
    cpu = {}
    single, *cpu["1"] = measured_verify(database, workers=1)
    log(
        f"verify, 1 connection: {single.summary()} in {single.seconds:.1f} s: {single.rate:,.0f} entries/s"
    )
    result, *cpu["2"] = measured_verify(database)
    log(f"verify, default (2 connections): {result.seconds:.1f} s: {result.rate:,.0f} entries/s")
    for label, run_ in (("1", single), ("2", result)):
        python, database_cpu = cpu[label]
        per = (python + database_cpu) / run_.entries * 1e6
        log(
            f"verify, {label} connection(s), CPU per entry: {per:.2f} µs "
            f"(Python {python / run_.entries * 1e6:.2f}, PostgreSQL "
            f"{database_cpu / run_.entries * 1e6:.2f}); two idle cores: at most "
            f"{2e6 / per:,.0f} entries/s"
        )
    if not (result.is_ok and single.is_ok):
        print(result.as_dict())
        return 1

    jl_small, jl_big = figures[f"jsonl-{small}"], figures[f"jsonl-{n}"]
    csv_small, csv_big = figures[f"csv-{small}"], figures[f"csv-{n}"]
    rows = [
        ("export peak RSS, JSON Lines, N vs N/10", jl_big["rss_kb"] / jl_small["rss_kb"], "≤ 1.2"),
        ("export peak RSS, CSV, N vs N/10", csv_big["rss_kb"] / csv_small["rss_kb"], "≤ 1.2"),
        (
            "export rate JSON Lines vs COPY",
            jl_big["count"] / jl_big["seconds"] / copy_rate,
            "≥ 0.2",
        ),
        ("export rate CSV vs COPY", csv_big["count"] / csv_big["seconds"] / copy_rate, "≥ 0.2"),
        ("append record() vs plain INSERT in a transaction", record_rate / plain_rate, "≥ 0.25"),
        ("append record() vs plain INSERT autocommit", record_rate / autocommit_rate, "(≥ 0.25)"),
        ("verification entries/s, 1 connection", single.rate, "(one core: for comparison)"),
        ("verification entries/s, 2 connections", result.rate, "≥ 200,000"),
        (
            "verification rate vs COPY of the same rows, 2 connections",
            result.rate / copy_rate,
            "(for comparison, under the run's load)",
        ),
        (
            "verification CPU µs per entry, 2 connections",
            sum(cpu["2"]) / result.entries * 1e6,
            "(2 cores: ≤ 10)",
        ),
    ]
    print()
    print(f"N = {n:,} entries; {machine()}")
    for label, value, target in rows:
        shown = f"{value:,.0f}" if value > 100 else f"{value:.2f}"
        print(f"  {label:45} {shown:>10}   target {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
