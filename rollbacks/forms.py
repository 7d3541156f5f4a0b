"""Forms of the operator's pages: planning a rollback, and the inputs its buttons need.

The services validate again (a reason that is only blank space is refused there too); the
forms give the browser a labelled, ``required`` field and the view a clean value.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError


class RollbackPlanForm(forms.Form):
    reason = forms.CharField(
        label="Reason",
        help_text="Why this run is being rolled back: the approvers and the ledger read it.",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Say why this run is being rolled back."},
    )
    is_drill = forms.BooleanField(
        label="Drill (a practice run, marked as such everywhere)", required=False
    )

    def add_service_error(self, exc: ValidationError) -> None:
        """Show a service's error next to the field it names, or above the form."""
        if hasattr(exc, "error_dict"):
            for field, messages in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, messages)
        else:
            self.add_error(None, exc.messages)


class NoInputForm(forms.Form):
    """Start, pause, resume, retry: the button is the whole form."""


class AbortForm(forms.Form):
    reason = forms.CharField(
        max_length=2000, error_messages={"required": "Say why the rollback is aborted."}
    )
    confirm = forms.BooleanField(
        error_messages={"required": "Tick “I understand…” to confirm the abort."}
    )


class SkipForm(forms.Form):
    reason = forms.CharField(
        max_length=2000, error_messages={"required": "A skip needs a justification."}
    )
    confirm = forms.BooleanField(
        error_messages={"required": "Tick “I understand…” to confirm the skip."}
    )


class ResolveForm(forms.Form):
    note = forms.CharField(
        max_length=2000, error_messages={"required": "Say what was done by hand."}
    )


def errors_text(form: forms.Form) -> str:
    """The form's errors as one sentence, for a message."""
    return " ".join(str(message) for errors in form.errors.values() for message in errors)
