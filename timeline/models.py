"""External events: what other systems tell Unwind (deploys, alerts, notes, process-run
events), shown on a rollback's timeline next to its ledger entries.

An event is an observation, not an action on a rollback, so it is not ledgered: it is kept
here with the account that posted it and the time it was received (docs/timeline.md).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from rollbacks.models import ProcessRun, Rollback, System


class Event(models.Model):
    class Kind(models.TextChoices):
        DEPLOY = "deploy", "deploy"
        ALERT = "alert", "alert"
        NOTE = "note", "note"
        PROCESS_RUN = "process_run", "process-run event"
        CONFIG_CHANGE = "config_change", "configuration change"
        INCIDENT = "incident", "incident"
        OTHER = "other", "other"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    source = models.CharField(
        max_length=100, help_text="Who sent it: ci, pagerduty, orders-migration…"
    )
    system = models.ForeignKey(
        System, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    title = models.CharField(max_length=200)
    occurred_at = models.DateTimeField(help_text="When it happened, as the source says.")
    received_at = models.DateTimeField(help_text="When Unwind stored it: the timeline's clock.")
    trace_id = models.CharField(max_length=32, blank=True)
    run = models.ForeignKey(
        ProcessRun, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    rollback = models.ForeignKey(
        Rollback, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    payload = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    idempotency_key = models.CharField(
        max_length=200,
        blank=True,
        help_text="The poster's Idempotency-Key header, if any: a repeat returns this event.",
    )
    request_sha256 = models.CharField(
        max_length=64,
        blank=True,
        help_text="Of the posted fields: tells a repeat from another event under the same key.",
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            # One event per key and account (keys are the client's, so scoped to it).
            models.UniqueConstraint(
                fields=["created_by", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="event_idempotency_key_unique",
            )
        ]
        # The timeline reads events after a cursor (received_at, id) by each of its joins.
        indexes = [
            models.Index(fields=["rollback", "received_at", "id"], name="event_rollback_seen"),
            models.Index(fields=["run", "received_at", "id"], name="event_run_seen"),
            models.Index(fields=["trace_id", "received_at", "id"], name="event_trace_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} from {self.source}: {self.title}"
