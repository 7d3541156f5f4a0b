"""Inputs of the reconciliation panel; the services validate again."""

from __future__ import annotations

from django import forms


class DismissForm(forms.Form):
    reason = forms.CharField(
        max_length=2000, error_messages={"required": "Say why this finding needs no action."}
    )


class FollowupForm(forms.Form):
    finding = forms.TypedMultipleChoiceField(
        coerce=int,
        error_messages={"required": "Select at least one finding."},
    )

    def __init__(self, data, *, finding_ids):
        super().__init__(data)
        self.fields["finding"].choices = [(str(i), str(i)) for i in finding_ids]


def errors_text(form: forms.Form) -> str:
    return " ".join(str(message) for errors in form.errors.values() for message in errors)
