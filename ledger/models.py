"""The ledger: one row per recorded action, hash-chained per rollback, with signed
checkpoints. Imports no other Unwind app.

``Entry`` and ``Checkpoint`` are append-only in the database (``APPEND_ONLY`` below on
PostgreSQL, ``ledger/migrations/0003`` on SQLite); ``ChainHead`` is the per-chain lock and
running head that ``record()`` updates; ``Verification`` and ``Export`` are bookkeeping.
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.conf import settings
from django.db import models
from django.utils import timezone

from ledger.canonical import GENESIS

GLOBAL_CHAIN = "global"

# The body of the PostgreSQL trigger function that refuses a change to an append-only table.
# django-pgtrigger wraps it so that ``pgtrigger.ignore()`` can let one named trigger through;
# only ``manage.py flush`` (ledger/management/commands/flush.py) does, for TRUNCATE.
_REFUSE = (
    "RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME "
    "USING ERRCODE = 'restrict_violation';"
)


def _append_only(table: str) -> list[pgtrigger.Trigger]:
    return [
        pgtrigger.Trigger(
            name=f"{table}_append_only",
            operation=pgtrigger.Update | pgtrigger.Delete,
            when=pgtrigger.Before,
            func=_REFUSE,
        ),
        pgtrigger.Trigger(
            name=f"{table}_no_truncate",
            operation=pgtrigger.Truncate,
            level=pgtrigger.Statement,
            when=pgtrigger.Before,
            func=_REFUSE,
        ),
    ]


def chain_for(rollback_id: int | None) -> str:
    """An entry's chain: its rollback's, or the global one."""
    return GLOBAL_CHAIN if rollback_id is None else f"rollback:{int(rollback_id)}"


class Outcome(models.TextChoices):
    OK = "ok", "ok"
    REFUSED = "refused", "refused"
    FAILED = "failed", "failed"


class Entry(models.Model):
    # Place in the chain (ledger/services.py: record()).
    chain = models.CharField(max_length=64, editable=False)
    seq = models.PositiveBigIntegerField(editable=False)
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False)

    at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=200, help_text="user:alice, service:ci-bot, worker, system")
    # No database constraint and no cascade: the ledger outlives the users it names (a
    # deleted user's entries keep the id), and an UPDATE to SET NULL would be refused anyway.
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    action = models.CharField(max_length=100, db_index=True)
    subject_type = models.CharField(max_length=50)
    subject_id = models.CharField(max_length=100)
    # The rollback an entry belongs to, when it belongs to one; kept as a plain id because the
    # ledger imports no other app and must outlive what it records.
    rollback_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    reason = models.TextField(blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.OK)
    trace_id = models.CharField(max_length=32, blank=True, db_index=True)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name_plural = "entries"
        indexes = [
            models.Index(fields=["subject_type", "subject_id"]),
            # A rollback's timeline reads its entries after a cursor (at, id): timeline/.
            models.Index(fields=["rollback_id", "at", "id"], name="ledger_entry_rollback_at"),
            models.Index(fields=["trace_id", "at", "id"], name="ledger_entry_trace_at"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="ledger_entry_chain_seq")
        ]
        triggers = _append_only("ledger_entry")

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.subject_type}:{self.subject_id}"

    def hashed_fields(self) -> dict:
        from ledger.canonical import FIELDS

        return {name: getattr(self, name) for name in FIELDS}


class ChainHead(models.Model):
    """The last entry of each chain. ``record()`` locks the row (``SELECT … FOR UPDATE``) so
    that appends to one chain are serialised and appends to different chains are not."""

    chain = models.CharField(max_length=64, primary_key=True)
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS)
    # The seq the latest checkpoint recorded: a head whose seq differs goes into the next one.
    checkpointed_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.chain} @ {self.seq}"


class Checkpoint(models.Model):
    """A signed record of every chain's head: what makes removing a whole chain (or the end
    of one) detectable. Chained to the previous checkpoint by ``prev_hash``.

    ``heads`` holds the chains whose head moved since the previous checkpoint
    (``{chain: [seq, hash]}``); replaying them in order gives every chain's head.
    """

    seq = models.PositiveIntegerField(unique=True)
    taken_at = models.DateTimeField()
    prev_hash = models.CharField(max_length=64)
    chain_count = models.PositiveIntegerField()
    entry_count = models.PositiveBigIntegerField()
    heads = models.JSONField(default=dict)
    public_key = models.CharField(max_length=64, help_text="base64 of the raw Ed25519 key")
    hash = models.CharField(max_length=64)
    signature = models.CharField(max_length=100, help_text="base64 Ed25519 signature")

    class Meta:
        triggers = _append_only("ledger_checkpoint")

    def __str__(self) -> str:
        return f"checkpoint {self.seq} ({self.entry_count} entries in {self.chain_count} chains)"

    def body(self) -> dict:
        """What is hashed and signed (ledger/checkpoints.py)."""
        from ledger.canonical import format_at

        return {
            "chain_count": self.chain_count,
            "entry_count": self.entry_count,
            "heads": self.heads,
            "prev_hash": self.prev_hash,
            "public_key": self.public_key,
            "seq": self.seq,
            "taken_at": format_at(self.taken_at),
        }


class Verification(models.Model):
    """The result of one run of ``verify()``: the auditor's badge shows the latest."""

    started_at = models.DateTimeField(default=timezone.now)
    seconds = models.FloatField(default=0)
    actor = models.CharField(max_length=200)
    is_ok = models.BooleanField()
    entries = models.PositiveBigIntegerField(default=0)
    chains = models.PositiveIntegerField(default=0)
    checkpoints = models.PositiveIntegerField(default=0)
    problem_count = models.PositiveIntegerField(default=0)
    problems = models.JSONField(default=list, blank=True, help_text="the first problems found")
    warnings = models.JSONField(default=list, blank=True)

    class Meta:
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"{'OK' if self.is_ok else 'FAILED'} at {self.started_at:%Y-%m-%d %H:%M:%S}"

    @property
    def first_problem(self) -> dict | None:
        return self.problems[0] if self.problems else None

    def summary(self) -> str:
        if self.is_ok:
            return (
                f"OK: {self.entries} entries in {self.chains} chains, "
                f"{self.checkpoints} checkpoints verified"
            )
        more = f" ({self.problem_count} problems in all)" if self.problem_count > 1 else ""
        return f"FAILED: {self.first_problem['message']}{more}"


class Export(models.Model):
    """One export: its filters, the bound that fixes its content, and, once its file has
    been streamed in full, its signed manifest."""

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSON Lines"
        CSV = "csv", "CSV"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=200)
    created_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    format = models.CharField(max_length=10, choices=Format.choices)
    filters = models.JSONField(default=dict, blank=True)
    upto_id = models.BigIntegerField(help_text="entries with a smaller id only")
    entry_id = models.BigIntegerField(help_text="the ledger.exported entry")
    completed_at = models.DateTimeField(null=True, blank=True)
    manifest = models.JSONField(null=True, blank=True)

    def __str__(self) -> str:
        return f"export {self.id} ({self.format})"

    @property
    def filename(self) -> str:
        return f"ledger-{self.created_at:%Y%m%d-%H%M%S}-{str(self.id)[:8]}.{self.format}"

    @property
    def manifest_filename(self) -> str:
        return self.filename + ".manifest.json"
