"""The estate: teams, systems, the versioned dependency map and per-system contracts.

Versions are immutable once published: a new map or contract is a new row, and rollbacks
pin the versions they were planned from. Writes go through ``rollbacks/services.py``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

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


class SystemQuerySet(models.QuerySet):
    def visible_to(self, user) -> SystemQuerySet:
        """Systems a user may see: every system for superusers and auditors, else their teams'."""
        if not user.is_authenticated:
            return self.none()
        if user.is_superuser or user.groups.filter(name="auditor").exists():
            return self
        return self.filter(team__group__user=user)


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
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_detail = models.CharField(max_length=300, blank=True)

    objects = SystemQuerySet.as_manager()

    class Meta:
        ordering = ["tier", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tier__gte=1, tier__lte=4), name="system_tier_1_to_4"
            )
        ]

    def __str__(self) -> str:
        return self.slug

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

    class Meta:
        ordering = ["system__slug", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["system", "version"], name="contract_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.system.slug} contract v{self.version}"
