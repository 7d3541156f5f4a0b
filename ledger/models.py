"""The ledger: one row per recorded action. Imports no other Unwind app."""

from django.conf import settings
from django.db import models


class Outcome(models.TextChoices):
    OK = "ok", "ok"
    REFUSED = "refused", "refused"
    FAILED = "failed", "failed"


class Entry(models.Model):
    at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=200, help_text="user:alice, service:ci-bot, worker, system")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
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
        indexes = [models.Index(fields=["subject_type", "subject_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.subject_type}:{self.subject_id}"
