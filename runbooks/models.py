"""Runbooks: pre-approved rollback templates for incidents that left no forward-action log.

A runbook is named (``slug``) and tied to an incident type; what it does lives in its
versions, which are immutable once published, like contracts (``rollbacks/models.py``): a
change is a new version. Instantiating a version makes a synthetic process run
(``runbook:<slug>``) whose forward actions are the version's steps filled with the given
parameters, and plans its rollback through the engine's one planning path
(``runbooks/services.py``, docs/runbooks.md).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from rollbacks.models import ProcessRun, Rollback, System, slug_validator


class IncidentType(models.Model):
    """One entry of the small incident taxonomy: how wide, what caused it, which systems."""

    class Scope(models.TextChoices):
        SINGLE_SYSTEM = "single_system", "one system"
        SERVICE = "service", "one service and its stores"
        CROSS_TEAM = "cross_team", "several teams' systems"

    class Cause(models.TextChoices):
        BAD_DEPLOY = "bad_deploy", "a bad deploy"
        DATA_MIGRATION = "data_migration", "a data migration"
        CONFIG_CHANGE = "config_change", "a configuration or feature-flag change"
        THIRD_PARTY = "third_party", "a third-party failure"
        OTHER = "other", "something else"

    slug = models.SlugField(unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=20, choices=Scope.choices)
    cause = models.CharField(max_length=20, choices=Cause.choices)
    systems = models.ManyToManyField(
        System, blank=True, related_name="+", help_text="The systems usually involved."
    )
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RunbookQuerySet(models.QuerySet):
    def published(self) -> RunbookQuerySet:
        return self.filter(versions__isnull=False).distinct()


class Runbook(models.Model):
    """A named template; its content is in its versions (``latest_version``)."""

    slug = models.SlugField(unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, help_text="When to use it, and what it undoes.")
    incident_type = models.ForeignKey(
        IncidentType, on_delete=models.PROTECT, related_name="runbooks"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RunbookQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.slug

    def latest_version(self) -> RunbookVersion | None:
        return self.versions.order_by("-version").first()


class RunbookVersion(models.Model):
    """One published version of a runbook. Never edited after publishing.

    ``parameters`` is a list of ``{name, type (string|int|choice), required, default, help,
    label, choices}``; ``steps`` a list of ``{system, action_type, params}`` whose params
    are templates over the parameters (``"{params.flag}"``). Checked by
    ``runbooks.validation`` (docs/runbooks.md).
    """

    runbook = models.ForeignKey(Runbook, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField(editable=False)
    published_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True)
    parameters = models.JSONField(default=list, blank=True)
    steps = models.JSONField(default=list)

    class Meta:
        ordering = ["runbook__slug", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["runbook", "version"], name="runbook_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.runbook.slug} v{self.version}"

    def system_slugs(self) -> list[str]:
        return sorted({step["system"] for step in self.steps})


class RunbookInstance(models.Model):
    """One instantiation: the runbook version, the parameters given, the synthetic run it
    made and the rollback planned from it."""

    version = models.ForeignKey(RunbookVersion, on_delete=models.PROTECT, related_name="instances")
    run = models.OneToOneField(
        ProcessRun, on_delete=models.PROTECT, related_name="runbook_instance"
    )
    rollback = models.OneToOneField(
        Rollback,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="runbook_instance",
    )
    values = models.JSONField(default=dict, help_text="The parameters, as cleaned.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.version} instance #{self.pk}"
