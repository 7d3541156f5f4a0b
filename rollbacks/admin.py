"""Admin for the estate. Published map and contract versions are read-only: "editing" one
means publishing a new version, which the add form pre-fills from the newest."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin
from django.contrib.auth.models import Group
from django.forms.models import BaseInlineFormSet
from django.urls import reverse
from django.utils.html import format_html

import ledger.services as ledger
from rollbacks import services
from rollbacks.models import Contract, DependencyEdge, DependencyMap, HealthCheck, System, Team


class TeamForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = ["slug", "name"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    form = TeamForm
    list_display = ("name", "slug", "group")

    def save_model(self, request, obj, form, change):
        if not change:
            obj.group, _ = Group.objects.get_or_create(name=f"team:{obj.slug}")
        super().save_model(request, obj, form, change)
        ledger.record(
            actor=request.user,
            action="estate.team.changed" if change else "estate.team.created",
            subject=obj,
            payload={"slug": obj.slug, "name": obj.name},
        )


@admin.register(System)
class SystemAdmin(admin.ModelAdmin):
    list_display = (
        "slug",
        "name",
        "kind",
        "team",
        "tier",
        "environment",
        "health",
        "is_rehearsal",
        "max_in_flight",
    )
    list_filter = ("kind", "tier", "environment", "team", "is_rehearsal")
    search_fields = ("slug", "name")
    readonly_fields = ("health", "health_checked_at", "health_detail")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        ledger.record(
            actor=request.user,
            action="estate.system.changed" if change else "estate.system.created",
            subject=obj,
            payload={"changed": form.changed_data, "slug": obj.slug},
        )


@admin.register(HealthCheck)
class HealthCheckAdmin(admin.ModelAdmin):
    list_display = ("system", "checked_at", "status", "latency_ms", "detail")
    list_filter = ("status", "system")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def check_based_on(based_on: int | None, latest, what: str) -> None:
    """Refuse to publish over a version published after the form was opened: the new
    version is built from what the form showed, so it would silently undo the other one.
    ``based_on``: the version the form started from (hidden field; blank: none)."""
    newest = latest.version if latest is not None else 0
    if (based_on or 0) == newest:
        return
    by = latest.published_by or "an import or the API"
    started = f"version {based_on}" if based_on else "no version"
    raise forms.ValidationError(
        f"{what} version {newest} was published by {by} at "
        f"{latest.published_at:%Y-%m-%d %H:%M:%S} UTC after this form was opened from "
        f"{started}; publishing now would undo its changes. Open the form again to start "
        f"from version {newest}."
    )


class DependencyMapForm(forms.ModelForm):
    based_on = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    class Meta:
        model = DependencyMap
        fields = ["note"]

    def clean(self):
        cleaned = super().clean()
        check_based_on(
            cleaned.get("based_on"), DependencyMap.objects.latest_published(), "Dependency map"
        )
        return cleaned


class EdgeFormSet(BaseInlineFormSet):
    """Validates the map as a whole: a cycle is refused naming its systems."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        edges = []
        for form in self.forms:
            data = form.cleaned_data
            if not data or data.get("DELETE"):
                continue
            edges.append((data["kind"], data["first"].slug, data["second"].slug))
        services.validate_edges(edges)


class EdgeInline(admin.TabularInline):
    model = DependencyEdge
    formset = EdgeFormSet
    extra = 3
    autocomplete_fields = ("first", "second")


@admin.register(DependencyMap)
class DependencyMapAdmin(admin.ModelAdmin):
    """Add = publish a new version (pre-filled from the newest); published versions are read-only."""

    form = DependencyMapForm
    inlines = [EdgeInline]
    list_display = ("version", "published_at", "published_by", "note", "edge_count")
    fields = ("note", "based_on")

    @admin.display(description="edges")
    def edge_count(self, obj):
        return obj.edges.count()

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        latest = DependencyMap.objects.latest_published()
        initial["based_on"] = latest.version if latest is not None else 0
        return initial

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        latest = DependencyMap.objects.latest_published()
        if (obj is None or obj.pk is None) and request.method == "GET" and latest is not None:
            kwargs["initial"] = [
                {"kind": e.kind, "first": e.first_id, "second": e.second_id}
                for e in latest.edges.order_by("id")
            ]
        return kwargs

    def get_inline_instances(self, request, obj=None):
        instances = super().get_inline_instances(request, obj)
        latest = DependencyMap.objects.latest_published()
        if obj is None and latest is not None:
            for inline in instances:
                inline.extra = latest.edges.count() + 3
        return instances

    def save_model(self, request, obj, form, change):
        obj.version = services.next_map_version()
        obj.published_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        services.record_map_published(form.instance, actor=request.user)


class PrettyJSONWidget(forms.Textarea):
    def format_value(self, value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return value
        return json.dumps(value, indent=2)


class ContractForm(forms.ModelForm):
    based_on = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    class Meta:
        model = Contract
        fields = ["system", "note", "actions", "reconciliation"]
        widgets = {
            "actions": PrettyJSONWidget(attrs={"rows": 24, "cols": 100}),
            "reconciliation": PrettyJSONWidget(attrs={"rows": 12, "cols": 100}),
        }

    def clean_actions(self):
        actions = self.cleaned_data["actions"]
        services.validate_contract_actions(actions)
        return actions

    def clean_reconciliation(self):
        checks = self.cleaned_data["reconciliation"] or []
        services.validate_contract_reconciliation(checks)
        return checks

    def clean(self):
        cleaned = super().clean()
        system = cleaned.get("system")
        if system is not None:
            latest = system.contracts.order_by("-version").first()
            check_based_on(cleaned.get("based_on"), latest, f"{system.slug}'s contract")
        return cleaned


@admin.register(Contract)
class ContractAdmin(admin.ModelAdmin):
    """Add = publish a new version for a system (pre-filled from its newest, ``?system=<id>``)."""

    form = ContractForm
    list_display = (
        "system",
        "version",
        "published_at",
        "published_by",
        "action_types",
        "new_version",
    )
    list_filter = ("system",)
    autocomplete_fields = ("system",)

    @admin.display(description="action types")
    def action_types(self, obj):
        return ", ".join(sorted(obj.actions))

    @admin.display(description="")
    def new_version(self, obj):
        url = reverse("admin:rollbacks_contract_add") + f"?system={obj.system_id}"
        return format_html('<a href="{}">publish a new version</a>', url)

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        system_id = request.GET.get("system")
        if system_id and system_id.isdigit():
            latest = Contract.objects.filter(system_id=system_id).order_by("-version").first()
            if latest is not None:
                initial["actions"] = latest.actions
                initial["reconciliation"] = latest.reconciliation
                initial["based_on"] = latest.version
        return initial

    def save_model(self, request, obj, form, change):
        obj.version = services.next_version_locked(obj.system, obj.system.contracts.all())
        obj.published_by = request.user
        super().save_model(request, obj, form, change)
        services.record_contract_published(obj, actor=request.user)


# API tokens ----------------------------------------------------------------------------------

from django.contrib import messages  # noqa: E402

from rollbacks.models import ApiToken  # noqa: E402


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Service accounts' API tokens. Adding one creates it with ``token_create`` and shows the
    token once; only its SHA-256 is kept. Tokens are revoked, never deleted (the ledger
    names them)."""

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    actions = ["revoke_tokens"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name")
        return (
            "name",
            "user",
            "prefix",
            "token_sha256",
            "created_at",
            "last_used_at",
            "revoked_at",
        )

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("user", "prefix", "token_sha256", "created_at", "last_used_at", "revoked_at")

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        from rollbacks.tokens import token_create

        if change:
            super().save_model(request, obj, form, change)
            ledger.record(
                actor=request.user,
                action="token.changed",
                subject=obj,
                payload={"changed": form.changed_data, "name": obj.name},
            )
            return
        token, raw = token_create(user=obj.user, name=obj.name, actor=request.user)
        # The admin goes on with ``obj`` (log entry, redirect): make it the created row.
        for field in ("id", "prefix", "token_sha256", "created_at"):
            setattr(obj, field, getattr(token, field))
        obj._state.adding = False
        request._unwind_new_token = raw

    def response_add(self, request, obj, post_url_continue=None):
        raw = getattr(request, "_unwind_new_token", None)
        if raw:
            self.message_user(
                request,
                format_html(
                    "The token for {} is <code>{}</code>. Copy it now: it is not stored and "
                    "will not be shown again.",
                    obj.user,
                    raw,
                ),
                messages.SUCCESS,
            )
        return super().response_add(request, obj, post_url_continue)

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset):
        from rollbacks.tokens import token_revoke

        revoked = sum(token_revoke(token=t, actor=request.user) for t in queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
