"""The ledger's filters, shared by the auditor's view, the exports (UI, API, command).

Query parameters: ``rollback``, ``chain``, ``system``, ``actor``, ``action``, ``outcome``,
``trace``, ``from`` and ``to`` (ISO 8601 times, UTC unless they carry an offset; ``from``
inclusive, ``to`` exclusive).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.db.models import Q, QuerySet
from django.utils import timezone

from ledger.canonical import format_at
from ledger.models import Entry, Outcome

FILTER_NAMES = ("rollback", "chain", "system", "actor", "action", "outcome", "trace", "from", "to")


class FilterForm(forms.Form):
    rollback = forms.IntegerField(label="Rollback", min_value=1, required=False)
    system = forms.CharField(
        label="System",
        max_length=100,
        required=False,
        help_text="slug, as in the payload's system or a system's own entries",
    )
    actor = forms.CharField(
        label="Actor", max_length=200, required=False, help_text="user:alice, worker, service:…"
    )
    action = forms.CharField(
        label="Action",
        max_length=100,
        required=False,
        help_text="step.attempt matches step.attempt and step.attempt.*",
    )
    outcome = forms.ChoiceField(
        label="Outcome", choices=[("", "any"), *Outcome.choices], required=False
    )
    trace = forms.RegexField(
        label="Trace id",
        regex=r"^[0-9a-fA-F]{32}$",
        required=False,
        error_messages={"invalid": "a trace id is 32 hexadecimal digits"},
    )
    chain = forms.CharField(label="Chain", max_length=64, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        # ``from`` and ``to`` are Python keywords: declared here rather than as attributes.
        def when() -> forms.DateTimeInput:
            return forms.DateTimeInput(
                attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"
            )

        self.fields["from"] = forms.DateTimeField(
            label="From (UTC)", required=False, widget=when(), help_text="inclusive"
        )
        self.fields["to"] = forms.DateTimeField(
            label="To (UTC)", required=False, widget=when(), help_text="exclusive"
        )

    def clean(self):
        data = super().clean()
        start, end = data.get("from"), data.get("to")
        if start and end and start >= end:
            self.add_error("to", "must be after From")
        if data.get("trace"):
            data["trace"] = data["trace"].lower()
        return data

    def filters(self) -> dict[str, Any]:
        """The filters that are set, as JSON (times in UTC): for exports and links."""
        out: dict[str, Any] = {}
        for name in FILTER_NAMES:
            value = self.cleaned_data.get(name)
            if value in (None, ""):
                continue
            out[name] = format_at(value) if isinstance(value, datetime) else value
        return out


def parse(params) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(filters, errors) from query parameters; a time without an offset is UTC."""
    form = FilterForm({k: params.get(k) for k in FILTER_NAMES if params.get(k) not in (None, "")})
    with timezone.override(UTC):
        is_valid = form.is_valid()
    if not is_valid:
        return {}, {name: list(errors) for name, errors in form.errors.items()}
    return form.filters(), {}


def matching(filters: dict[str, Any], queryset: QuerySet | None = None) -> QuerySet:
    """Entries matching ``filters`` (as ``FilterForm.filters()`` gives them)."""
    qs = Entry.objects.all() if queryset is None else queryset
    if "rollback" in filters:
        qs = qs.filter(rollback_id=filters["rollback"])
    if "chain" in filters:
        qs = qs.filter(chain=filters["chain"])
    if "system" in filters:
        system = filters["system"]
        qs = qs.filter(
            Q(payload__system=system)
            | Q(subject_type="system", payload__slug=system)
            | Q(subject_type="system", subject_id=system)
        )
    if "actor" in filters:
        qs = qs.filter(actor__icontains=filters["actor"])
    if "action" in filters:
        action = filters["action"].rstrip(".")
        qs = qs.filter(Q(action=action) | Q(action__startswith=action + "."))
    if "outcome" in filters:
        qs = qs.filter(outcome=filters["outcome"])
    if "trace" in filters:
        qs = qs.filter(trace_id=filters["trace"])
    if "from" in filters:
        qs = qs.filter(at__gte=_time(filters["from"]))
    if "to" in filters:
        qs = qs.filter(at__lt=_time(filters["to"]))
    return qs


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
