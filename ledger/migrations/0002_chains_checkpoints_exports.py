"""Hash chains, chain heads, checkpoints, verifications and exports.

Existing entries are chained in id order (``backfill_chains``) before the (chain, seq)
constraint is added; the append-only triggers come in 0003, after the backfill's UPDATEs.
"""

import uuid

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

BATCH = 1000


def backfill_chains(apps, schema_editor):
    # The canonical form is the ledger's contract and never changes, so importing it here
    # is safe (a migration usually must not import app code).
    from ledger.canonical import GENESIS, entry_hash

    Entry = apps.get_model("ledger", "Entry")
    ChainHead = apps.get_model("ledger", "ChainHead")
    heads: dict[str, tuple[int, str]] = {}
    batch = []
    fields = [
        "id", "at", "actor", "actor_user_id", "action", "subject_type", "subject_id",
        "rollback_id", "reason", "outcome", "trace_id", "payload",
    ]
    for row in Entry.objects.order_by("id").values(*fields).iterator(chunk_size=BATCH):
        chain = "global" if row["rollback_id"] is None else f"rollback:{row['rollback_id']}"
        seq, prev = heads.get(chain, (0, GENESIS))
        row.update(chain=chain, seq=seq + 1, prev_hash=prev)
        digest = entry_hash(row)
        heads[chain] = (seq + 1, digest)
        batch.append(Entry(id=row["id"], chain=chain, seq=seq + 1, prev_hash=prev, hash=digest))
        if len(batch) >= BATCH:
            Entry.objects.bulk_update(batch, ["chain", "seq", "prev_hash", "hash"])
            batch = []
    if batch:
        Entry.objects.bulk_update(batch, ["chain", "seq", "prev_hash", "hash"])
    ChainHead.objects.bulk_create(
        ChainHead(chain=chain, seq=seq, hash=digest) for chain, (seq, digest) in heads.items()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("ledger", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ChainHead",
            fields=[
                ("chain", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("seq", models.PositiveBigIntegerField(default=0)),
                (
                    "hash",
                    models.CharField(
                        default="0000000000000000000000000000000000000000000000000000000000000000",
                        max_length=64,
                    ),
                ),
                ("checkpointed_seq", models.PositiveBigIntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name="Checkpoint",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.PositiveIntegerField(unique=True)),
                ("taken_at", models.DateTimeField()),
                ("prev_hash", models.CharField(max_length=64)),
                ("chain_count", models.PositiveIntegerField()),
                ("entry_count", models.PositiveBigIntegerField()),
                ("heads", models.JSONField(default=dict)),
                ("public_key", models.CharField(help_text="base64 of the raw Ed25519 key", max_length=64)),
                ("hash", models.CharField(max_length=64)),
                ("signature", models.CharField(help_text="base64 Ed25519 signature", max_length=100)),
            ],
        ),
        migrations.CreateModel(
            name="Export",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("created_by", models.CharField(max_length=200)),
                ("format", models.CharField(choices=[("jsonl", "JSON Lines"), ("csv", "CSV")], max_length=10)),
                ("filters", models.JSONField(blank=True, default=dict)),
                ("upto_id", models.BigIntegerField(help_text="entries with a smaller id only")),
                ("entry_id", models.BigIntegerField(help_text="the ledger.exported entry")),
                ("completed_at", models.DateTimeField(blank=True, null=True)),
                ("manifest", models.JSONField(blank=True, null=True)),
                (
                    "created_by_user",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="Verification",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("started_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("seconds", models.FloatField(default=0)),
                ("actor", models.CharField(max_length=200)),
                ("is_ok", models.BooleanField()),
                ("entries", models.PositiveBigIntegerField(default=0)),
                ("chains", models.PositiveIntegerField(default=0)),
                ("checkpoints", models.PositiveIntegerField(default=0)),
                ("problem_count", models.PositiveIntegerField(default=0)),
                ("problems", models.JSONField(blank=True, default=list, help_text="the first problems found")),
                ("warnings", models.JSONField(blank=True, default=list)),
            ],
            options={"get_latest_by": "started_at"},
        ),
        migrations.AddField(
            model_name="entry",
            name="chain",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="entry",
            name="hash",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="entry",
            name="prev_hash",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="entry",
            name="seq",
            field=models.PositiveBigIntegerField(default=0, editable=False),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="entry",
            name="actor_user",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(backfill_chains, migrations.RunPython.noop, elidable=False),
        migrations.AddConstraint(
            model_name="entry",
            constraint=models.UniqueConstraint(fields=("chain", "seq"), name="ledger_entry_chain_seq"),
        ),
    ]
