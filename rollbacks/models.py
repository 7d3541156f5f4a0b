"""The estate: teams, systems, the versioned dependency map and per-system contracts.

Versions are immutable once published: a new map or contract is a new row, and rollbacks
pin the versions they were planned from. Writes go through ``rollbacks/services.py``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]*$", "Use lowercase letters, digits and hyphens (e.g. orders-db)."
)


class Team(models.Model):
    """An owning team. Membership is the linked auth group (teams are groups)."""

    slug = models.SlugField(unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="team")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def sees_everything(user) -> bool:
    """Superusers and auditors read every object (auditors change nothing)."""
    return user.is_superuser or user.groups.filter(name="auditor").exists()


def _visible(user, queryset, perm: str):
    """The objects a user may see: all for superusers and auditors, else those on which the
    user holds the guardian object permission ``perm`` (rollbacks/permissions.py)."""
    from rollbacks.permissions import permitted

    if not user.is_authenticated:
        return queryset.none()
    if sees_everything(user):
        return queryset
    return permitted(user, perm, queryset)


class SystemQuerySet(models.QuerySet):
    def visible_to(self, user) -> SystemQuerySet:
        """Systems a user may see: every system for superusers and auditors, else their teams'
        (``view_system``, held by the owning team's group)."""
        return _visible(user, self, "view_system")


class System(models.Model):
    class Kind(models.TextChoices):
        DATABASE = "database", "database"
        QUEUE = "queue", "queue"
        SERVICE = "service", "service"
        THIRD_PARTY_API = "third_party_api", "third-party API"
        FEATURE_FLAG = "feature_flag", "feature flags"
        CACHE = "cache", "cache"
        STORAGE = "storage", "storage"
        OTHER = "other", "other"

    class Health(models.TextChoices):
        UNKNOWN = "unknown", "unknown"
        GREEN = "green", "healthy"
        AMBER = "amber", "degraded"
        RED = "red", "down"

    slug = models.SlugField(unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="systems")
    tier = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(4)],
        help_text="Criticality: 1 is the most critical, 4 the least.",
    )
    environment = models.CharField(max_length=50, default="production")
    health_check = models.JSONField(
        default=dict,
        blank=True,
        help_text='{"http": "http://host/health"} or {"sql": "<target database name>"}; empty for none.',
    )
    is_rehearsal = models.BooleanField(
        default=False,
        help_text="A rehearsal target: drills may touch it, production plans may not.",
    )
    max_in_flight = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="At most this many of its steps run at once, across all workers; empty for no limit.",
    )
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_detail = models.CharField(max_length=300, blank=True)

    objects = SystemQuerySet.as_manager()

    class Meta:
        ordering = ["tier", "name"]
        permissions = [("operate_system", "May plan and run rollbacks that touch this system")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tier__gte=1, tier__lte=4), name="system_tier_1_to_4"
            )
        ]

    def __str__(self) -> str:
        return self.slug

    @classmethod
    def from_db(cls, db, field_names, values):
        system = super().from_db(db, field_names, values)
        # To see, on save, whether the team changed (rollbacks/permissions.py moves its
        # object permissions then).
        system._loaded_team_id = system.__dict__.get("team_id")
        return system

    def clean(self) -> None:
        from rollbacks.contracts import health_check_errors

        errors = health_check_errors(self.health_check)
        if errors:
            from django.core.exceptions import ValidationError

            raise ValidationError({"health_check": errors})


class HealthCheck(models.Model):
    """One probe of a system's health check: the history behind ``System.health``."""

    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="health_checks")
    checked_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=10, choices=System.Health.choices)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["system", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.system} {self.status} at {self.checked_at:%H:%M:%S}"


class DependencyMapQuerySet(models.QuerySet):
    def latest_published(self) -> DependencyMap | None:
        return self.order_by("-version").first()


class DependencyMap(models.Model):
    """One published version of the whole dependency map. Never edited after publishing."""

    version = models.PositiveIntegerField(unique=True, editable=False)
    published_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True)

    objects = DependencyMapQuerySet.as_manager()

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"dependency map v{self.version}"


class DependencyEdge(models.Model):
    class Kind(models.TextChoices):
        BEFORE = "before", "unwind first before second"
        TANDEM = "tandem", "in tandem (same stage)"

    map = models.ForeignKey(DependencyMap, on_delete=models.CASCADE, related_name="edges")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.BEFORE)
    first = models.ForeignKey(System, on_delete=models.PROTECT, related_name="+")
    second = models.ForeignKey(System, on_delete=models.PROTECT, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["map", "kind", "first", "second"], name="edge_unique"),
            models.CheckConstraint(
                condition=~models.Q(first=models.F("second")), name="edge_not_self"
            ),
        ]

    def __str__(self) -> str:
        sep = " before " if self.kind == self.Kind.BEFORE else " with "
        return f"{self.first_id}{sep}{self.second_id}"


class Contract(models.Model):
    """One published version of a system's rollback semantics. Never edited after publishing.

    ``actions`` maps each forward action type to its compensation; its shape is checked by
    ``rollbacks.contracts.validate_actions`` (documented in docs/contracts.md).
    """

    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="contracts")
    version = models.PositiveIntegerField(editable=False)
    published_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True)
    actions = models.JSONField(default=dict)
    reconciliation = models.JSONField(
        default=list,
        blank=True,
        help_text="Checks run after each rollback that touched the system "
        "(rollbacks.contracts.validate_reconciliation, docs/reconciliation.md).",
    )

    class Meta:
        ordering = ["system__slug", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["system", "version"], name="contract_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.system.slug} contract v{self.version}"


class ApiToken(models.Model):
    """A bearer token of a service account (a user flagged as one): it acts with that
    user's role and teams, and four-eyes applies to it like to a person. Only the SHA-256
    of the token is stored; the token itself is shown once, when it is created."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise it.")
    token_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ProcessRunQuerySet(models.QuerySet):
    def visible_to(self, user) -> ProcessRunQuerySet:
        """Runs whose forward actions touched a system of the user's teams, or that they
        registered (``view_processrun``, held by those teams' groups and the registrant)."""
        return _visible(user, self, "view_processrun")


class ProcessRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "running"
        FAILED = "failed", "failed"
        SUCCEEDED = "succeeded", "succeeded"

    process = models.CharField(max_length=100, help_text="The name of the automated process.")
    external_id = models.CharField(max_length=200, help_text="The process's own id for this run.")
    trace_id = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    failure_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    objects = ProcessRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("operate_processrun", "May plan a rollback of this run")]
        constraints = [
            models.UniqueConstraint(
                fields=["process", "external_id"], name="run_external_id_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.process} #{self.external_id}"


class ForwardAction(models.Model):
    """One thing a process run did to a system, as it reported it."""

    class Status(models.TextChoices):
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed (no effect)"

    run = models.ForeignKey(ProcessRun, on_delete=models.CASCADE, related_name="actions")
    sequence = models.PositiveIntegerField()
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="+")
    action_type = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.COMPLETED)
    params = models.JSONField(default=dict, blank=True)
    before = models.JSONField(null=True, blank=True, help_text="The before-image, where relevant.")
    after = models.JSONField(null=True, blank=True, help_text="The after-image, where relevant.")
    idempotency_key = models.CharField(max_length=200)
    trace_id = models.CharField(max_length=32, blank=True)
    reported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["run", "idempotency_key"], name="action_key_unique"),
            models.UniqueConstraint(fields=["run", "sequence"], name="action_sequence_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.action_type} on {self.system_id}"


class RollbackQuerySet(models.QuerySet):
    def visible_to(self, user) -> RollbackQuerySet:
        """Rollbacks that touch a system of one of the user's teams, or that they requested
        (``view_rollback``, held by those teams' groups and the requester); superusers and
        auditors see all."""
        return _visible(user, self, "view_rollback")

    def active(self) -> RollbackQuerySet:
        return self.filter(state__in=[Rollback.State.RUNNING, Rollback.State.PAUSED])

    def with_time_to_approval(self) -> RollbackQuerySet:
        """Time to approval, the one definition the metrics page and the reports share.

        1. ``needed_approval``: the rollback's ``rollback.submitted`` ledger entry (written in
           the planning transaction) sent it to awaiting approval.
        2. ``approved_at``: then, the first ``rollback.approved`` entry (the approval that
           completed the policies); None when it never came (rejected, aborted, started by
           break-glass) or none was needed (a later follow-up stage's approval is not the
           plan's).
        3. ``time_to_approval``: planned (``created_at``) → ``approved_at``.
        """
        from ledger.models import Entry  # ledger imports no other app: no cycle either way

        entries = Entry.objects.filter(rollback_id=models.OuterRef("pk")).order_by()
        first_approval = (
            entries.filter(action="rollback.approved")
            .values("rollback_id")
            .annotate(first=models.Min("at"))
            .values("first")
        )
        needed = models.Exists(
            entries.filter(
                action="rollback.submitted", payload__to=Rollback.State.AWAITING_APPROVAL
            )
        )
        return self.annotate(
            needed_approval=needed,
            approved_at=models.Case(
                models.When(needed_approval=True, then=models.Subquery(first_approval)),
                default=None,
                output_field=models.DateTimeField(),
            ),
            time_to_approval=models.ExpressionWrapper(
                models.F("approved_at") - models.F("created_at"),
                output_field=models.DurationField(),
            ),
        )


class Rollback(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft", "draft"
        AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"
        APPROVED = "approved", "approved"
        RUNNING = "running", "running"
        PAUSED = "paused", "paused"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        PARTIALLY_ROLLED_BACK = "partially_rolled_back", "partially rolled back"
        ABORTED = "aborted", "aborted"

    TERMINAL = (State.SUCCEEDED, State.FAILED, State.PARTIALLY_ROLLED_BACK, State.ABORTED)

    run = models.ForeignKey(ProcessRun, on_delete=models.PROTECT, related_name="rollbacks")
    state = models.CharField(
        max_length=30, choices=State.choices, default=State.DRAFT, db_index=True
    )
    reason = models.TextField()
    is_drill = models.BooleanField(default=False)
    trigger = models.CharField(
        max_length=10,
        default="manual",
        help_text="Who asked: manual (browser), api, alert (a trigger rule), or runbook (an "
        "instance of a pre-approved runbook).",
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    dependency_map = models.ForeignKey(
        DependencyMap,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The map version this plan was made from (pinned).",
    )
    trace_id = models.CharField(max_length=32, blank=True)
    # Indexed: the metrics page picks the rollbacks planned in a period.
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Whose authority it runs on: workers check it again before every step.",
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome_summary = models.TextField(blank=True)

    objects = RollbackQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            (
                "operate_rollback",
                "May start, pause, resume, abort this rollback and act on its steps",
            ),
            ("approve_rollback", "May approve or reject this rollback and open its gates"),
        ]

    def __str__(self) -> str:
        return f"rollback #{self.pk} of {self.run}"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL


class Stage(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        HALTED = "halted", "halted: a step needs a human"
        SUCCEEDED = "succeeded", "succeeded"
        CANCELLED = "cancelled", "cancelled"

    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="stages")
    index = models.PositiveIntegerField()
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["rollback", "index"]
        constraints = [
            models.UniqueConstraint(fields=["rollback", "index"], name="stage_index_unique")
        ]

    def __str__(self) -> str:
        return f"stage {self.index} of rollback #{self.rollback_id}"


class StepQuerySet(models.QuerySet):
    def unfinished(self) -> StepQuerySet:
        return self.exclude(state__in=Step.DONE)


class Step(models.Model):
    """One compensation on one system. Claimed with a lease and a fencing token."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        RETRY_WAIT = "retry_wait", "waiting to retry"
        WAITING_HUMAN = "waiting_human", "waiting for a human"
        FAILED = "failed", "failed: waiting for a human"
        SUCCEEDED = "succeeded", "succeeded"
        SKIPPED = "skipped", "skipped"
        CANCELLED = "cancelled", "cancelled"

    DONE = (State.SUCCEEDED, State.SKIPPED)
    NEEDS_HUMAN = (State.WAITING_HUMAN, State.FAILED)

    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="steps")
    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="steps")
    forward_action = models.ForeignKey(
        ForwardAction, on_delete=models.PROTECT, related_name="steps"
    )
    system = models.ForeignKey(System, on_delete=models.PROTECT, related_name="+")
    contract = models.ForeignKey(
        Contract,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The contract version this step was planned from (pinned).",
    )
    kind = models.CharField(
        max_length=20, help_text="Compensation kind: http, sql, flag, manual, …"
    )
    is_manual = models.BooleanField(default=False)
    manual_reason = models.CharField(max_length=200, blank=True)
    spec = models.JSONField(default=dict, help_text="The rendered compensation.")
    state = models.CharField(
        max_length=20, choices=State.choices, default=State.PENDING, db_index=True
    )
    # Not unique: a second rollback of the same forward action reuses its key on purpose.
    idempotency_key = models.CharField(max_length=100, db_index=True)
    retryable = models.BooleanField(default=True)
    max_attempts = models.PositiveIntegerField(default=3)
    backoff_initial_s = models.FloatField(default=1.0)
    backoff_max_s = models.FloatField(default=30.0)
    backoff_multiplier = models.FloatField(default=2.0)
    timeout_s = models.FloatField(default=30.0)
    attempts = models.PositiveIntegerField(default=0)
    fencing_token = models.PositiveBigIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    output = models.JSONField(default=dict, blank=True)
    human_note = models.TextField(
        blank=True, help_text="The reason for a skip, or a manual step's note."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = StepQuerySet.as_manager()

    class Meta:
        ordering = ["stage__index", "id"]
        indexes = [
            # The claim's way in (rollbacks/engine/loop.py): a running rollback's steps that
            # wait to run. Small (only those rows), and it keeps the claim cheap while
            # thousands of steps are due and the planner's statistics are not yet fresh.
            models.Index(
                fields=["rollback"],
                name="step_waiting_to_run",
                condition=models.Q(state__in=("pending", "retry_wait")),
            ),
        ]

    def __str__(self) -> str:
        return f"step #{self.pk} {self.kind} on {self.system_id}"

    @property
    def is_done(self) -> bool:
        return self.state in self.DONE


class Attempt(models.Model):
    class Outcome(models.TextChoices):
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        TRANSIENT = "transient", "transient error"
        PERMANENT = "permanent", "permanent error"
        LOST = "lost", "lost (lease expired)"
        REFUSED = "refused", "refused (stale fencing token)"

    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="attempt_set")
    number = models.PositiveIntegerField()
    fencing_token = models.PositiveBigIntegerField()
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.RUNNING)
    error = models.TextField(blank=True)
    output = models.JSONField(default=dict, blank=True)
    trace_id = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["step", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of step #{self.step_id}"


class Outbox(models.Model):
    """Tasks to publish, written in the transaction that makes them necessary.

    The relay publishes them after commit; the sweeper publishes any that a crash between
    commit and publish left behind. A duplicate publish is harmless: messages only nudge.
    """

    task = models.CharField(max_length=200)
    kwargs = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    available_at = models.DateTimeField(db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        verbose_name_plural = "outbox"

    def __str__(self) -> str:
        return f"{self.task}({self.kwargs})"


# Object permissions (django-guardian, direct foreign keys) ---------------------------------
# Granted to team groups by rollbacks/permissions.py; see docs/permissions.md.


class SystemUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(System, on_delete=models.CASCADE)


class SystemGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(System, on_delete=models.CASCADE)


class ProcessRunUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(ProcessRun, on_delete=models.CASCADE)


class ProcessRunGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(ProcessRun, on_delete=models.CASCADE)


class RollbackUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Rollback, on_delete=models.CASCADE)


class RollbackGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Rollback, on_delete=models.CASCADE)
