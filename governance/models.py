"""Governance: approval policies and approvals, break-glass reviews, trigger rules and the
alerts they match, notifications, and temporary incident grants.

Imports flow governance → rollbacks → ledger: the engine knows states (a rollback awaiting
approval); governance decides and releases it (``governance/gate.py``).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MinValueValidator
from django.db import models

from rollbacks.models import Rollback, System


class TriggerKind(models.TextChoices):
    MANUAL = "manual", "a person (browser)"
    API = "api", "a service account (API)"
    ALERT = "alert", "an alert (trigger rule)"
    RUNBOOK = "runbook", "a runbook (instantiated by an operator)"


class ApprovalPolicy(models.Model):
    """Which rollbacks need whose approval. Every policy whose scope matches applies; the
    strictest combination wins (``governance/policies.py``)."""

    class DrillScope(models.TextChoices):
        ANY = "any", "drills and real rollbacks"
        REAL = "real", "real rollbacks only"
        DRILL = "drill", "drills only"

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    # Scope: an empty list means "any". A rollback is in scope when it touches at least one
    # system that matches systems / tiers / environments, and its trigger and drill match.
    systems = models.ManyToManyField(System, blank=True, related_name="+")
    tiers = models.JSONField(default=list, blank=True, help_text="e.g. [1, 2]; empty for any tier")
    environments = models.JSONField(default=list, blank=True, help_text='e.g. ["production"]')
    trigger_kinds = models.JSONField(
        default=list, blank=True, help_text='any of "manual", "api", "alert", "runbook"'
    )
    drill_scope = models.CharField(
        max_length=10, choices=DrillScope.choices, default=DrillScope.ANY
    )
    runbooks = models.ManyToManyField(
        "runbooks.RunbookVersion",
        blank=True,
        related_name="+",
        help_text="Only rollbacks instantiated from these runbook versions; empty for any.",
    )
    preapproves_runbooks = models.BooleanField(
        default=False,
        help_text="Pre-approve instances of the runbook versions above: the approvals that "
        "policies naming neither systems nor runbooks would require are waived "
        "(docs/runbooks.md).",
    )
    # Requirements.
    approvals_required = models.PositiveSmallIntegerField(default=1)
    eligible_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="+",
        help_text="Who may approve; empty means the approver role.",
    )
    four_eyes = models.BooleanField(
        default=True, help_text="The requester never approves their own rollback."
    )
    approver_from_each_team = models.BooleanField(
        default=False, help_text="A rollback spanning several teams needs an approver from each."
    )
    expires_after_s = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(60)],
        help_text="An approval older than this no longer counts.",
    )
    attestations = models.JSONField(
        default=list,
        blank=True,
        help_text='Ticked with a comment by each approver: [{"key": "dpo", "label": "Personal data checked"}]',
    )
    gate_tiers = models.JSONField(
        default=list,
        blank=True,
        help_text="A stage touching a system of these tiers waits for an approver to open it.",
    )
    auto_start = models.BooleanField(
        default=False, help_text="A rollback planned by a trigger rule may start without a human."
    )

    class Meta:
        verbose_name_plural = "approval policies"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class PolicyDecision(models.Model):
    """What the policies required of one rollback, decided when it was submitted."""

    rollback = models.OneToOneField(
        Rollback, on_delete=models.CASCADE, related_name="policy_decision"
    )
    policies = models.ManyToManyField(ApprovalPolicy, blank=True, related_name="+")
    trigger_kind = models.CharField(
        max_length=10, choices=TriggerKind.choices, default=TriggerKind.MANUAL
    )
    requirements = models.JSONField(
        default=dict, help_text="The strictest combination of the matching policies."
    )
    explanation = models.TextField()
    decided_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"policy decision for rollback #{self.rollback_id}"


class Approval(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve", "approved"
        REJECT = "reject", "rejected"

    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="approvals")
    approver = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField()
    attestations = models.JSONField(
        default=dict, blank=True, help_text="key -> the approver's comment"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            # One standing decision per approver and rollback (the four-eyes count is of people).
            models.UniqueConstraint(
                fields=["rollback", "approver"],
                condition=models.Q(revoked_at__isnull=True),
                name="one_live_approval_per_approver",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} by {self.approver} on rollback #{self.rollback_id}"


class StageGate(models.Model):
    """A stage that touches a critical tier waits here until an approver opens it."""

    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="gates")
    stage_index = models.PositiveIntegerField()
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    opened_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rollback", "stage_index"], name="one_gate_per_stage")
        ]

    def __str__(self) -> str:
        return f"gate before stage {self.stage_index} of rollback #{self.rollback_id}"


class BreakGlass(models.Model):
    """A rollback started without approval by someone holding the break-glass right."""

    rollback = models.OneToOneField(Rollback, on_delete=models.CASCADE, related_name="break_glass")
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField()
    used_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "break-glass uses"
        permissions = [("use_break_glass", "May start a rollback without approval (break-glass)")]

    def __str__(self) -> str:
        return f"break-glass on rollback #{self.rollback_id}"


class BreakGlassReview(models.Model):
    """Two people other than the one who broke the glass review it afterwards."""

    break_glass = models.ForeignKey(BreakGlass, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    comment = models.TextField()
    reviewed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["break_glass", "reviewer"], name="one_review_per_reviewer"
            )
        ]

    def __str__(self) -> str:
        return f"review by {self.reviewer} of {self.break_glass}"


class TriggerRule(models.Model):
    """Plans (and, where a policy allows, starts) a rollback when a matching alert fires."""

    name = models.SlugField(max_length=100, unique=True)
    is_active = models.BooleanField(default=True)
    match = models.JSONField(
        default=dict,
        help_text='Label matchers: {"alertname": "CheckoutErrorRate", "severity": "=~critical|page"}',
    )
    min_alerts = models.PositiveIntegerField(
        default=1, help_text="Fire only when at least this many alerts of the group match."
    )
    run_label = models.CharField(
        max_length=100,
        default="process_run",
        help_text="The alert label naming the process run to roll back (its id or external id).",
    )
    reason_template = models.CharField(max_length=300, default="alert {alertname} fired")
    drill = models.BooleanField(default=False)
    service_account = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The account the planned rollback is requested by (its role and teams apply).",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Alert(models.Model):
    """One alert of an Alertmanager webhook, stored before the webhook is answered."""

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    receiver = models.CharField(max_length=200, blank=True)
    group_key = models.CharField(max_length=1000)
    fingerprint = models.CharField(max_length=100)
    status = models.CharField(max_length=20)  # firing | resolved
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    labels = models.JSONField(default=dict)
    annotations = models.JSONField(default=dict)
    rule = models.ForeignKey(
        TriggerRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    rollback = models.ForeignKey(
        Rollback, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    outcome = models.TextField(blank=True, help_text="What Unwind did with it.")

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            # Alertmanager repeats and HA pairs send duplicates: one row per occurrence.
            models.UniqueConstraint(
                fields=["fingerprint", "starts_at", "status"], name="alert_dedupe"
            )
        ]

    def __str__(self) -> str:
        return f"{self.labels.get('alertname', '?')} {self.status} ({self.fingerprint})"


class Notification(models.Model):
    class Kind(models.TextChoices):
        APPROVAL_OVERDUE = "approval_overdue", "approval pending past its deadline"
        STEP_NEEDS_HUMAN = "step_needs_human", "a step waits for a human"
        ROLLBACK_FAILED = "rollback_failed", "a rollback failed"
        BREAK_GLASS = "break_glass", "break-glass used"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="notifications")
    subject_key = models.CharField(
        max_length=100, help_text="What it is about (a step id…): sent once per key."
    )
    channel = models.CharField(max_length=20)  # email | webhook
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "rollback", "subject_key", "channel"], name="notify_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} for rollback #{self.rollback_id} by {self.channel}"


class IncidentGrant(models.Model):
    """Temporary membership of a team for an incident: it expires by itself."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="incident_grants"
    )
    team_group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="incident_grants")
    reason = models.TextField()
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    granted_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.user} in {self.team_group} until {self.expires_at:%Y-%m-%d %H:%M}"
