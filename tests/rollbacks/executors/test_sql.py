"""SQL compensations on real target databases (SQLite file and PostgreSQL), exactly once."""

from __future__ import annotations

import socket
import sqlite3
import threading

import psycopg.errors
import pytest

from rollbacks.executors import ExecutorError, executor_for

REFUND = "UPDATE orders SET total = total - %(amount)s WHERE id = %(id)s"


def _sql(make_work, statement=REFUND, params=None, **overrides):
    spec = {"database": "orders", "statement": statement, "params": params or {}}
    return make_work("sql", spec, **overrides)


def _restore(make_work, key, *, before, after, **overrides):
    spec = {"database": "orders", "table": "orders", "key": key}
    return make_work("sql_restore", spec, before=before, after=after, **overrides)


def _recorded_keys(orders_db) -> list[str]:
    orders_db.conn.rollback()
    try:
        return [r[0] for r in orders_db.conn.execute("SELECT key FROM unwind_idempotency")]
    except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):  # never created
        return []


def test_compensation_applied_twice_with_the_same_key_changes_the_row_once(orders_db, make_work):
    work = _sql(make_work, params={"amount": 30, "id": 1})
    first = executor_for("sql").execute(work)
    second = executor_for("sql").execute(work)

    assert orders_db()[1] == ("paid", 70, None)
    assert first.output == {"database": "orders", "replayed": False, "rows": 1}
    assert second.output == {"database": "orders", "replayed": True}
    assert _recorded_keys(orders_db) == [work.idempotency_key]


def test_concurrent_attempts_with_the_same_key_apply_once(orders_db, make_work):
    work = _sql(make_work, params={"amount": 10, "id": 3}, timeout_s=30)  # a loaded machine
    start, outcomes = threading.Barrier(4), []

    def attempt():
        start.wait()  # all four also race to create unwind_idempotency
        try:
            outcomes.append(executor_for("sql").execute(work).output["replayed"])
        except ExecutorError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False, True, True, True]
    assert orders_db()[3] == ("new", 30, "gift")


def test_a_lock_held_past_the_step_timeout_fails_transiently(orders_db, make_work):
    from rollbacks.targets import connect

    other = connect("orders")
    if isinstance(other, sqlite3.Connection):
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")  # SQLite locks the whole database for writing
    else:
        other.execute("SELECT 1 FROM orders WHERE id = 1 FOR UPDATE")
    try:
        with pytest.raises(ExecutorError) as caught:
            executor_for("sql").execute(
                _sql(make_work, params={"amount": 1, "id": 1}, timeout_s=0.3)
            )
        assert not caught.value.permanent
        message = caught.value.message
        assert "statement timeout" in message or "database is locked" in message
    finally:
        other.rollback()
        other.close()
    assert orders_db()[1] == ("paid", 100, None)
    assert _recorded_keys(orders_db) == []


def test_placeholders_and_literal_percent_work_on_both_drivers(orders_db, make_work):
    work = _sql(make_work, "UPDATE orders SET note = '100%%' || %(x)s WHERE id = 2", {"x": "!"})
    executor_for("sql").execute(work)
    assert orders_db()[2] == ("refunded", 0, "100%!")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ordres SET total = 0",  # no such table
        "UPDATE orders SET status = NULL WHERE id = 1",  # NOT NULL constraint
        "UPDTE orders SET total = 0",  # syntax
    ],
)
def test_a_bad_statement_fails_permanently_and_records_nothing(orders_db, make_work, statement):
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql").execute(_sql(make_work, statement))
    assert caught.value.permanent and caught.value.message.startswith("orders: ")
    assert _recorded_keys(orders_db) == []
    assert orders_db()[1] == ("paid", 100, None)


def test_unknown_target_database_is_permanent(make_work, monkeypatch):
    monkeypatch.delenv("TARGET_DATABASE_NOWHERE", raising=False)
    work = make_work("sql", {"database": "nowhere", "statement": "SELECT 1"})
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql").execute(work)
    assert caught.value.permanent and "TARGET_DATABASE_NOWHERE" in caught.value.message


def test_unreachable_postgres_target_is_transient(make_work, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TARGET_DATABASE_GONE", f"postgres://postgres@127.0.0.1:{port}/gone")
    work = make_work("sql", {"database": "gone", "statement": "SELECT 1"})
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql").execute(work)
    assert not caught.value.permanent and "OperationalError" in caught.value.message


def test_restore_puts_back_the_before_image_once(orders_db, make_work):
    # The forward action refunded order 2: paid/100 -> refunded/0 (note stayed NULL).
    work = _restore(
        make_work,
        {"id": 2},
        before={"status": "paid", "total": 100},
        after={"status": "refunded", "total": 0, "note": None},
    )
    first = executor_for("sql_restore").execute(work)
    second = executor_for("sql_restore").execute(work)

    assert orders_db()[2] == ("paid", 100, None)
    assert first.output == {"database": "orders", "replayed": False, "table": "orders", "rows": 1}
    assert second.output == {"database": "orders", "replayed": True}


def test_restore_of_a_row_already_restored_is_a_no_op(orders_db, make_work):
    work = _restore(
        make_work, {"id": 1}, before={"status": "paid", "total": 100}, after={"status": "void"}
    )
    outcome = executor_for("sql_restore").execute(work)
    assert outcome.output["replayed"] is True and outcome.output["detail"] == "already restored"
    assert orders_db()[1] == ("paid", 100, None)


def test_restore_refuses_a_row_changed_since_capture_and_leaves_it(orders_db, make_work):
    # Captured after-image says total 0, but someone has since set it to 5.
    orders_db.conn.execute("UPDATE orders SET total = 5 WHERE id = 2")
    orders_db.conn.commit()
    work = _restore(
        make_work,
        {"id": 2},
        before={"status": "paid", "total": 100},
        after={"status": "refunded", "total": 0},
    )
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql_restore").execute(work)
    assert caught.value.permanent
    assert "changed since it was captured: refusing to overwrite" in caught.value.message
    assert orders_db()[2] == ("refunded", 5, None)
    assert _recorded_keys(orders_db) == []


def test_restore_without_before_image_deletes_the_inserted_row(orders_db, make_work):
    after = {"id": 3, "status": "new", "total": 40, "note": "gift"}
    first = executor_for("sql_restore").execute(
        _restore(make_work, {"id": 3}, before=None, after=after)
    )
    again = executor_for("sql_restore").execute(
        _restore(make_work, {"id": 3}, before=None, after=after, idempotency_key="other")
    )
    assert 3 not in orders_db()
    assert first.output["rows"] == 1
    assert again.output["replayed"] is True and again.output["detail"] == "already restored"


def test_delete_refuses_a_row_changed_since_it_was_inserted(orders_db, make_work):
    after = {"id": 3, "status": "new", "total": 40, "note": None}  # note is 'gift' now
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql_restore").execute(_restore(make_work, {"id": 3}, before={}, after=after))
    assert caught.value.permanent and "changed since it was captured" in caught.value.message
    assert orders_db()[3] == ("new", 40, "gift")


def test_restore_without_after_image_is_refused(orders_db, make_work):
    work = _restore(make_work, {"id": 2}, before={"status": "paid"}, after=None)
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql_restore").execute(work)
    assert caught.value.permanent and "no after-image" in caught.value.message
    assert orders_db()[2] == ("refunded", 0, None)


@pytest.mark.parametrize(
    "table, before",
    [
        ('orders" SET total = 0; --', {"status": "paid"}),
        ("orders", {"status = 'x', total": 1}),
    ],
)
def test_restore_refuses_names_that_are_not_identifiers(orders_db, make_work, table, before):
    work = _restore(make_work, {"id": 2}, before=before, after={"status": "refunded"})
    work.spec["table"] = table
    with pytest.raises(ExecutorError) as caught:
        executor_for("sql_restore").execute(work)
    assert caught.value.permanent and "is not a valid table or column name" in caught.value.message
    assert orders_db()[2] == ("refunded", 0, None)


@pytest.mark.parametrize(
    ("expect_rows", "order_id", "fails"),
    [(1, 999, True), ({"min": 1}, 999, True), (1, 1, False), ({"min": 0, "max": 0}, 1, True)],
)
def test_expect_rows_fails_a_statement_that_changed_another_count(
    orders_db, make_work, expect_rows, order_id, fails
):
    """A DELETE of 0 rows used to count as succeeded; with ``expect_rows`` it fails the step
    (permanently) and rolls the statement and its key back (issue 16, finding 16)."""
    work = make_work(
        "sql",
        {
            "database": "orders",
            "statement": REFUND,
            "params": {"amount": 30, "id": order_id},
            "expect_rows": expect_rows,
        },
    )
    if not fails:
        assert executor_for("sql").execute(work).output["rows"] == 1
        return
    before = orders_db()
    with pytest.raises(ExecutorError, match="expect_rows") as caught:
        executor_for("sql").execute(work)
    assert caught.value.permanent is True
    assert orders_db() == before  # the statement rolled back
    assert _recorded_keys(orders_db) == []  # and so did the key: a retry runs it again
