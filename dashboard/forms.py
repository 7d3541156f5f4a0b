from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from dashboard.metrics import Filters, default_period

MAX_DAYS = 366


class MetricsFilterForm(forms.Form):
    """The metrics page's GET form: a period of whole days, the grouping, one system."""

    since = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="To (inclusive)", widget=forms.DateInput(attrs={"type": "date"}))
    bucket = forms.ChoiceField(label="Group by", choices=[("day", "day"), ("week", "week")])
    system = forms.ChoiceField(label="System", required=False)

    def __init__(self, data: Any, *, systems: list[Any], today: date) -> None:
        since, until = default_period(today)
        initial = {"since": since, "until": until, "bucket": "day", "system": ""}
        # An empty query string shows the default period; any parameter is validated.
        super().__init__(data if data else None, initial=initial)
        self.systems = {s.slug: s for s in systems}
        self.fields["system"].choices = [("", "all systems")] + [(s.slug, s.slug) for s in systems]
        self.defaults = initial

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until:
            if since > until:
                self.add_error("until", "“To” must be on or after “From”.")
            elif (until - since).days + 1 > MAX_DAYS:
                self.add_error("until", f"The period may span at most {MAX_DAYS} days.")
        return cleaned

    def filters(self) -> Filters:
        values = self.cleaned_data if self.is_bound else self.defaults
        zone = timezone.get_current_timezone()
        return Filters(
            since=datetime.combine(values["since"], time.min, tzinfo=zone),
            until=datetime.combine(values["until"] + timedelta(days=1), time.min, tzinfo=zone),
            bucket=values["bucket"],
            system=self.systems.get(values["system"] or ""),
        )
