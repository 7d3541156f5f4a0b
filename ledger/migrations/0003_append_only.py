"""Append-only in the database.

PostgreSQL: django-pgtrigger triggers refuse UPDATE and DELETE (row level) and TRUNCATE
(statement level) on ``ledger_entry`` and ``ledger_checkpoint``. SQLite has no TRUNCATE and
no session variables: plain triggers ``RAISE(ABORT)`` on UPDATE and DELETE; the DELETE ones
let ``manage.py flush`` through via ``ledger_flushing()``, an SQL function that Django's
connections register (ledger/db.py) and that no other client has (so a DELETE from the
sqlite3 shell fails too).
"""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

SQLITE_TABLES = ("ledger_entry", "ledger_checkpoint")


def sqlite_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for table in SQLITE_TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN "
            f"SELECT RAISE(ABORT, 'the ledger is append-only: UPDATE on {table} is refused'); END"
        )
        schema_editor.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"WHEN NOT ledger_flushing() BEGIN "
            f"SELECT RAISE(ABORT, 'the ledger is append-only: DELETE on {table} is refused'); END"
        )


def drop_sqlite_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for table in SQLITE_TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")


_FUNC = (
    "RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME "
    "USING ERRCODE = 'restrict_violation';"
)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0002_chains_checkpoints_exports")]

    operations = [
        pgtrigger.migrations.AddTrigger(
            model_name="entry",
            trigger=pgtrigger.compiler.Trigger(
                name="ledger_entry_append_only",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func=_FUNC,
                    hash="483043f27df40a2cdb5537db1ab106ed26aa948b",
                    operation="UPDATE OR DELETE",
                    pgid="pgtrigger_ledger_entry_append_only_e980c",
                    table="ledger_entry",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="entry",
            trigger=pgtrigger.compiler.Trigger(
                name="ledger_entry_no_truncate",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func=_FUNC,
                    hash="be2a96480cb0143622f8e51afc55242d9442db1e",
                    level="STATEMENT",
                    operation="TRUNCATE",
                    pgid="pgtrigger_ledger_entry_no_truncate_1a2fa",
                    table="ledger_entry",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="checkpoint",
            trigger=pgtrigger.compiler.Trigger(
                name="ledger_checkpoint_append_only",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func=_FUNC,
                    hash="a10dd47261f5dc65fcdb2eaf5d60a27a8d4d0b82",
                    operation="UPDATE OR DELETE",
                    pgid="pgtrigger_ledger_checkpoint_append_only_85c57",
                    table="ledger_checkpoint",
                    when="BEFORE",
                ),
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name="checkpoint",
            trigger=pgtrigger.compiler.Trigger(
                name="ledger_checkpoint_no_truncate",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func=_FUNC,
                    hash="d4d7cef221afeae4912f34c2e478ca71bacce74c",
                    level="STATEMENT",
                    operation="TRUNCATE",
                    pgid="pgtrigger_ledger_checkpoint_no_truncate_ddb36",
                    table="ledger_checkpoint",
                    when="BEFORE",
                ),
            ),
        ),
        migrations.RunPython(sqlite_triggers, drop_sqlite_triggers, elidable=False),
    ]
