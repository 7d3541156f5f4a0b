"""Governance in Django admin: approval policies and trigger rules are edited here, with
validation, and every change (and deletion) is ledgered; approvals, break-glass uses and
their reviews, alerts and notifications are records, read-only; incident grants are made
through ``services.incident_grant`` and ended early by an action."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

import ledger.services as ledger
from governance import services
from governance.models import (
    Alert,
    Approval,
    ApprovalPolicy,
    BreakGlass,
    BreakGlassReview,
    IncidentGrant,
    Notification,
    PolicyDecision,
    StageGate,
    TriggerRule,
)
from governance.validation import (
    LABEL_NAME,
    clean_attestations,
    clean_environments,
    clean_match,
    clean_tiers,
    clean_trigger_kinds,
    preapproval_errors,
)
from rollbacks import access
from rollbacks.admin import PrettyJSONWidget

# Ledgering admin changes -------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A cleaned form value as JSON for the ledger (querysets of groups / systems by name)."""
    if isinstance(value, QuerySet):
        return sorted(str(v) for v in value)
    if isinstance(value, list | dict | str | int | float | bool) or value is None:
        return value
    return str(value)


class JSONFieldsForm(forms.ModelForm):
    """JSON fields with a callable default (``list``, ``dict``) would post a hidden copy of
    their initial value to tell what changed; a constant default needs none, and without it
    ``changed_data`` (which the ledger records) is right even for a client that omits it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field, forms.JSONField):
                field.show_hidden_initial = False


class LedgeredAdmin(admin.ModelAdmin):
    """Every save and deletion is a ledger entry ``<noun>.created|changed|deleted`` naming
    the changed fields and their new values."""

    ledger_noun = ""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        ledger.record(
            actor=request.user,
            action=f"{self.ledger_noun}.{'changed' if change else 'created'}",
            subject=obj,
            reason=f"{obj} {'changed' if change else 'created'} in admin",
            payload={
                "name": str(obj),
                "changed": form.changed_data,
                "values": {f: _plain(form.cleaned_data.get(f)) for f in form.changed_data},
            },
        )

    def delete_model(self, request, obj):
        self._record_deleted(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # The changelist's "delete selected" action runs outside the admin's transaction.
        with transaction.atomic():
            for obj in queryset:
                self._record_deleted(request, obj)
            super().delete_queryset(request, queryset)

    def _record_deleted(self, request, obj) -> None:
        ledger.record(
            actor=request.user,
            action=f"{self.ledger_noun}.deleted",
            subject=obj,
            reason=f"{obj} deleted in admin",
            payload={"name": str(obj)},
        )


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record: admins read it; nobody adds, changes or deletes it here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# Policies and trigger rules ------------------------------------------------------------------


class ApprovalPolicyForm(JSONFieldsForm):
    class Meta:
        model = ApprovalPolicy
        fields = [
            "name",
            "description",
            "is_active",
            "systems",
            "tiers",
            "environments",
            "trigger_kinds",
            "drill_scope",
            "runbooks",
            "preapproves_runbooks",
            "approvals_required",
            "eligible_groups",
            "four_eyes",
            "approver_from_each_team",
            "expires_after_s",
            "attestations",
            "gate_tiers",
            "auto_start",
        ]
        widgets = {
            "attestations": PrettyJSONWidget(attrs={"rows": 6, "cols": 80}),
            "tiers": forms.TextInput(attrs={"size": 20}),
            "gate_tiers": forms.TextInput(attrs={"size": 20}),
            "environments": forms.TextInput(attrs={"size": 40}),
            "trigger_kinds": forms.TextInput(attrs={"size": 40}),
        }

    def clean_tiers(self):
        return clean_tiers(self.cleaned_data["tiers"])

    def clean_gate_tiers(self):
        return clean_tiers(self.cleaned_data["gate_tiers"])

    def clean_environments(self):
        return clean_environments(self.cleaned_data["environments"])

    def clean_trigger_kinds(self):
        return clean_trigger_kinds(self.cleaned_data["trigger_kinds"])

    def clean_attestations(self):
        return clean_attestations(self.cleaned_data["attestations"])

    def clean(self):
        data = super().clean()
        for field, message in preapproval_errors(
            preapproves=bool(data.get("preapproves_runbooks")),
            names_runbooks=bool(data.get("runbooks")),
            approvals=data.get("approvals_required"),
        ).items():
            self.add_error(field, message)
        return data


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(LedgeredAdmin):
    form = ApprovalPolicyForm
    ledger_noun = "policy"
    list_display = (
        "name",
        "is_active",
        "scope",
        "approvals_required",
        "four_eyes",
        "expires_after_s",
        "gate_tiers",
        "auto_start",
    )
    list_filter = ("is_active", "four_eyes", "auto_start", "drill_scope")
    search_fields = ("name", "description")
    filter_horizontal = ("systems", "runbooks", "eligible_groups")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_active")}),
        (
            "Scope (empty means any)",
            {
                "fields": (
                    "systems",
                    "tiers",
                    "environments",
                    "trigger_kinds",
                    "drill_scope",
                    "runbooks",
                )
            },
        ),
        ("Runbooks", {"fields": ("preapproves_runbooks",)}),
        (
            "Requirements",
            {
                "fields": (
                    "approvals_required",
                    "eligible_groups",
                    "four_eyes",
                    "approver_from_each_team",
                    "expires_after_s",
                    "attestations",
                    "gate_tiers",
                    "auto_start",
                )
            },
        ),
    )

    @admin.display(description="scope")
    def scope(self, obj: ApprovalPolicy) -> str:
        parts = []
        if obj.tiers:
            parts.append("tier " + "/".join(map(str, obj.tiers)))
        if obj.environments:
            parts.append("/".join(obj.environments))
        if obj.trigger_kinds:
            parts.append("by " + "/".join(obj.trigger_kinds))
        if obj.drill_scope != ApprovalPolicy.DrillScope.ANY:
            parts.append(obj.get_drill_scope_display())
        runbooks = [str(v) for v in obj.runbooks.all()]
        if runbooks:
            verb = "pre-approves" if obj.preapproves_runbooks else "runbook"
            parts.append(f"{verb} {', '.join(runbooks)}")
        return ", ".join(parts) or "every rollback"


class TriggerRuleForm(JSONFieldsForm):
    class Meta:
        model = TriggerRule
        fields = [
            "name",
            "is_active",
            "match",
            "min_alerts",
            "run_label",
            "reason_template",
            "drill",
            "service_account",
        ]
        widgets = {"match": PrettyJSONWidget(attrs={"rows": 5, "cols": 80})}

    def clean_match(self):
        return clean_match(self.cleaned_data["match"])

    def clean_min_alerts(self):
        value = self.cleaned_data["min_alerts"]
        if value < 1:
            raise ValidationError("At least 1: the rule fires when this many alerts match.")
        return value

    def clean_run_label(self):
        value = (self.cleaned_data.get("run_label") or "").strip()
        if not value:
            raise ValidationError("Name the alert label that carries the process run's id.")
        if not LABEL_NAME.match(value):
            raise ValidationError(f"{value!r} is not a label name (letters, digits and _).")
        return value

    def clean_service_account(self):
        account = self.cleaned_data.get("service_account")
        if account is not None and (
            not account.is_active or not access.has_role(account, *access.OPERATOR_ROLES)
        ):
            raise ValidationError(
                "The account plans the rollbacks: it must be active and have the operator role."
            )
        return account


@admin.register(TriggerRule)
class TriggerRuleAdmin(LedgeredAdmin):
    form = TriggerRuleForm
    ledger_noun = "trigger_rule"
    list_display = ("name", "is_active", "match", "min_alerts", "run_label", "drill")
    list_filter = ("is_active", "drill")
    search_fields = ("name",)


# Records -------------------------------------------------------------------------------------


@admin.register(PolicyDecision)
class PolicyDecisionAdmin(ReadOnlyAdmin):
    list_display = ("rollback", "trigger_kind", "decided_at", "explanation")
    list_select_related = ("rollback",)
    search_fields = ("explanation",)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ("rollback", "approver", "decision", "created_at", "expires_at", "revoked_at")
    list_filter = ("decision", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("rollback", "approver")
    search_fields = ("approver__username", "comment")


class BreakGlassReviewInline(admin.TabularInline):
    model = BreakGlassReview
    extra = 0
    fields = ("reviewer", "reviewed_at", "comment")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(BreakGlass)
class BreakGlassAdmin(ReadOnlyAdmin):
    list_display = ("rollback", "used_by", "used_at", "review_count", "reason")
    list_select_related = ("rollback", "used_by")
    inlines = [BreakGlassReviewInline]

    @admin.display(description="reviews")
    def review_count(self, obj: BreakGlass) -> str:
        return f"{obj.reviews.count()} of 2"


@admin.register(StageGate)
class StageGateAdmin(ReadOnlyAdmin):
    list_display = ("rollback", "stage_index", "opened_by", "opened_at", "comment")
    list_select_related = ("rollback", "opened_by")


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "status", "fingerprint", "alertname", "rule", "rollback")
    list_filter = ("status", "rule")
    list_select_related = ("rule", "rollback")
    search_fields = ("fingerprint", "group_key")

    @admin.display(description="alertname")
    def alertname(self, obj: Alert) -> str:
        return obj.labels.get("alertname", "")


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "rollback", "channel", "sent_at", "error")
    list_filter = ("kind", "channel")
    list_select_related = ("rollback",)


# Incident grants -----------------------------------------------------------------------------


class IncidentGrantForm(forms.ModelForm):
    hours = forms.FloatField(
        min_value=0.1, max_value=72, initial=4, help_text="It lapses by itself after this."
    )

    class Meta:
        model = IncidentGrant
        fields = ("user", "team_group", "reason")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team_group"].queryset = Group.objects.filter(team__isnull=False)
        self.fields["team_group"].label = "Team"


@admin.register(IncidentGrant)
class IncidentGrantAdmin(admin.ModelAdmin):
    """Add = ``services.incident_grant`` (ledgered); a grant is then read-only, and can be
    ended early with the action (ledgered too)."""

    list_display = ("user", "team_group", "granted_by", "granted_at", "expires_at", "is_live")
    list_select_related = ("user", "team_group", "granted_by")
    actions = ["end_now"]

    @admin.display(boolean=True, description="live")
    def is_live(self, obj: IncidentGrant) -> bool:
        return obj.expires_at > timezone.now()

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = IncidentGrantForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "team_group", "reason", "hours")
        return ("user", "team_group", "reason", "granted_by", "granted_at", "expires_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.get_fields(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # end it early instead: the ledger keeps who had access when

    def save_model(self, request, obj, form, change):
        if change:
            return
        grant = services.incident_grant(
            user=form.cleaned_data["user"],
            team_group=form.cleaned_data["team_group"],
            actor=request.user,
            reason=form.cleaned_data["reason"],
            hours=form.cleaned_data["hours"],
        )
        # The admin goes on with ``obj`` (log entry, redirect): make it the created row.
        for field in ("id", "granted_by", "granted_at", "expires_at"):
            setattr(obj, field, getattr(grant, field))
        obj._state.adding = False

    @admin.action(description="End the selected grants now")
    def end_now(self, request, queryset):
        now = timezone.now()
        ended = 0
        with transaction.atomic():
            ids = list(queryset.values_list("pk", flat=True))
            live = IncidentGrant.objects.select_for_update().filter(pk__in=ids, expires_at__gt=now)
            for grant in live:
                IncidentGrant.objects.filter(pk=grant.pk).update(expires_at=now)
                ledger.record(
                    actor=request.user,
                    action="grant.ended",
                    subject=grant,
                    reason="ended early in admin",
                    payload={"user": grant.user.get_username(), "team": grant.team_group.name},
                )
                ended += 1
        self.message_user(request, f"Ended {ended} grant(s).", messages.SUCCESS)
