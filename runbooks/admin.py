"""Runbooks in Django admin. Every change is ledgered. A published version is read-only:
"editing" a runbook means publishing a new version, pre-filled from the newest
(``?runbook=<id>``), checked whole before anything is saved (a bad field is named)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html

import ledger.services as ledger
from rollbacks import services as estate
from rollbacks.admin import PrettyJSONWidget, check_based_on
from runbooks import services, validation
from runbooks.models import IncidentType, Runbook, RunbookVersion


class LedgeredChanges(admin.ModelAdmin):
    """Saves are ledgered as ``<noun>.created|changed`` with the changed fields; rows are
    never deleted here (the ledger and published versions name them)."""

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
                "values": {f: str(form.cleaned_data.get(f)) for f in form.changed_data},
            },
        )

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(IncidentType)
class IncidentTypeAdmin(LedgeredChanges):
    ledger_noun = "incident_type"
    list_display = ("name", "slug", "scope", "cause")
    list_filter = ("scope", "cause")
    filter_horizontal = ("systems",)


class VersionInline(admin.TabularInline):
    model = RunbookVersion
    fields = ("version", "published_at", "published_by", "note")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Runbook)
class RunbookAdmin(LedgeredChanges):
    ledger_noun = "runbook"
    list_display = ("name", "slug", "incident_type", "latest", "new_version")
    list_filter = ("incident_type",)
    search_fields = ("slug", "name")
    inlines = [VersionInline]

    @admin.display(description="latest version")
    def latest(self, obj):
        version = obj.latest_version()
        return f"v{version.version}" if version else "none published"

    @admin.display(description="")
    def new_version(self, obj):
        url = reverse("admin:runbooks_runbookversion_add") + f"?runbook={obj.pk}"
        return format_html('<a href="{}">publish a new version</a>', url)


class RunbookVersionForm(forms.ModelForm):
    based_on = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    class Meta:
        model = RunbookVersion
        fields = ["runbook", "note", "parameters", "steps"]
        widgets = {
            "parameters": PrettyJSONWidget(attrs={"rows": 12, "cols": 100}),
            "steps": PrettyJSONWidget(attrs={"rows": 16, "cols": 100}),
        }

    def clean(self):
        data = super().clean()
        if "parameters" not in data or "steps" not in data:
            return data  # not JSON: the field already says so
        errors = validation.version_errors(
            data["parameters"], data["steps"], services.contract_actions()
        )
        for path, message in errors:
            field = "parameters" if path.startswith("parameters") else "steps"
            self.add_error(field, ValidationError(f"{path}: {message}"))
        runbook = data.get("runbook")
        if runbook is not None:
            latest = runbook.versions.order_by("-version").first()
            check_based_on(data.get("based_on"), latest, f"Runbook {runbook.slug}")
        return data


@admin.register(RunbookVersion)
class RunbookVersionAdmin(admin.ModelAdmin):
    """Add = publish a new version (pre-filled from the runbook's newest)."""

    form = RunbookVersionForm
    list_display = ("runbook", "version", "published_at", "published_by", "systems", "note")
    list_filter = ("runbook",)

    @admin.display(description="systems")
    def systems(self, obj):
        return ", ".join(obj.system_slugs())

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        runbook_id = request.GET.get("runbook")
        if runbook_id and runbook_id.isdigit():
            latest = RunbookVersion.objects.filter(runbook_id=runbook_id).order_by("-version")
            if latest.exists():
                initial["parameters"] = latest[0].parameters
                initial["steps"] = latest[0].steps
                initial["based_on"] = latest[0].version
        return initial

    def save_model(self, request, obj, form, change):
        obj.version = estate.next_version_locked(obj.runbook, obj.runbook.versions.all())
        obj.published_by = request.user
        super().save_model(request, obj, form, change)
        services.record_version_published(obj, actor=request.user)
