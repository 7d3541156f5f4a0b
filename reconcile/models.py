"""Reconciliation after a rollback: each run of the checks, each check's result, each finding.

A ``Reconciliation`` is one run of the contracts' checks over the systems a rollback touched
(queued by the outbox when the rollback ends, or by an operator). Its ``CheckResult`` rows say
what every check answered — clean, findings, or an error — so "no findings" never hides a
check that could not run. Each ``Finding`` is one thing a check found, with the compensation
its contract suggests, and what the operator decided about it. See docs/reconciliation.md.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from rollbacks.contracts import FINDING_CATEGORIES
from rollbacks.models import Contract, Rollback, Step, System, sees_everything


class Reconciliation(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"

    class Trigger(models.TextChoices):
        AUTO = "auto", "the rollback ended"
        MANUAL = "manual", "an operator re-ran it"

    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="reconciliations")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.AUTO)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    worker = models.CharField(max_length=200, blank=True)
    summary = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["state", "requested_at"])]

    def __str__(self) -> str:
        return f"reconciliation #{self.pk} of rollback #{self.rollback_id}"

    @property
    def is_pending(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING)


class CheckResult(models.Model):
    class Outcome(models.TextChoices):
        CLEAN = "clean", "clean"
        FINDINGS = "findings", "findings"
        ERROR = "error", "could not run"
        NO_CHECKS = "no_checks", "no checks defined"

    reconciliation = models.ForeignKey(
        Reconciliation, on_delete=models.CASCADE, related_name="results"
    )
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="+")
    contract = models.ForeignKey(
        Contract, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    check_name = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    detail = models.TextField(blank=True)
    finding_count = models.PositiveIntegerField(default=0)
    truncated = models.BooleanField(default=False, help_text="More rows than max_findings.")
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["reconciliation", "system__slug", "check_name"]

    def __str__(self) -> str:
        return f"{self.system_id}/{self.check_name}: {self.outcome}"


class FindingQuerySet(models.QuerySet):
    def visible_to(self, user) -> FindingQuerySet:
        """Findings of the rollbacks a user may see."""
        return self.filter(rollback__in=Rollback.objects.visible_to(user))

    def actionable_by(self, user) -> FindingQuerySet:
        """Findings on systems the user may operate (guardian's ``operate_system``, held by the
        owning team's group or lent by an incident grant; admins: all); auditors act on none."""
        if not getattr(user, "is_authenticated", False):
            return self.none()
        if user.is_superuser:
            return self
        if sees_everything(user):
            return self.none()
        from rollbacks.permissions import permitted

        return self.filter(system__in=permitted(user, "operate_system", System.objects.all()))


class Finding(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "open"
        ADDED = "added", "added as a follow-up step"
        DISMISSED = "dismissed", "dismissed"

    Category = models.TextChoices(
        "Category", [(c, c.replace("_", " ")) for c in FINDING_CATEGORIES]
    )

    reconciliation = models.ForeignKey(
        Reconciliation, on_delete=models.CASCADE, related_name="findings"
    )
    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="findings")
    result = models.ForeignKey(CheckResult, on_delete=models.CASCADE, related_name="findings")
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="+")
    check_name = models.CharField(max_length=100)
    category = models.CharField(max_length=30, choices=Category.choices)
    description = models.CharField(max_length=500)
    details = models.JSONField(
        default=dict, help_text="The finding's columns, as the check saw them."
    )
    fingerprint = models.CharField(max_length=64, db_index=True)
    compensation = models.JSONField(
        default=dict, blank=True, help_text="The suggested compensation, rendered."
    )
    compensation_error = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    dismiss_reason = models.TextField(blank=True)
    followup_step = models.ForeignKey(
        Step, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = FindingQuerySet.as_manager()

    class Meta:
        ordering = ["reconciliation", "system__slug", "check_name", "id"]

    def __str__(self) -> str:
        return f"finding #{self.pk} {self.category} on {self.system_id}"
