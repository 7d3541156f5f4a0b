"""Forms of the governance panels on the rollback page: approve or reject, withdraw an
approval, break the glass, review a break-glass, open a stage gate.

The services validate again; the forms give the browser labelled, ``required`` fields and
put a service's error next to the field it names.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError


class GovernanceForm(forms.Form):
    def add_service_error(self, exc: ValidationError) -> None:
        """A service's error next to the field it names, or above the form."""
        if not hasattr(exc, "error_dict"):
            self.add_error(None, exc.messages)
            return
        for field, messages in exc.message_dict.items():
            self.add_error(field if field in self.fields else None, messages)


class ApprovalForm(GovernanceForm):
    """A comment, and per attestation the policy requires a tick and a comment. Approve and
    Reject are two buttons of this one form; a rejection needs only the comment."""

    comment = forms.CharField(
        label="Your comment",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What you checked (approve) or why you say no (reject): the ledger keeps it.",
        error_messages={"required": "Say what you checked, or why you reject it."},
    )

    def __init__(
        self, *args, attestations: list[dict] | None = None, is_reject: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.is_reject = is_reject
        self.required_attestations = list(attestations or [])
        for attestation in self.required_attestations:
            key = attestation["key"]
            self.fields[f"attest-{key}"] = forms.BooleanField(
                label=attestation.get("label", key), required=False
            )
            self.fields[f"attest-{key}-comment"] = forms.CharField(
                label=f"What you checked for “{attestation.get('label', key)}”",
                max_length=2000,
                required=False,
            )

    def clean(self):
        cleaned = super().clean()
        if self.is_reject:
            return cleaned
        for attestation in self.required_attestations:
            key, label = attestation["key"], attestation.get("label", attestation["key"])
            if not cleaned.get(f"attest-{key}"):
                self.add_error(f"attest-{key}", f"Tick “{label}” to attest it.")
            if not (cleaned.get(f"attest-{key}-comment") or "").strip():
                self.add_error(f"attest-{key}-comment", f"Say what you checked for “{label}”.")
        return cleaned

    def attestations(self) -> dict[str, str]:
        return {
            a["key"]: self.cleaned_data.get(f"attest-{a['key']}-comment", "")
            for a in self.required_attestations
        }

    def attestation_rows(self) -> list[tuple[dict, forms.BoundField, forms.BoundField]]:
        """(attestation, its checkbox, its comment) for the template."""
        return [
            (a, self[f"attest-{a['key']}"], self[f"attest-{a['key']}-comment"])
            for a in self.required_attestations
        ]


class RevokeForm(GovernanceForm):
    reason = forms.CharField(
        label="Why withdraw your approval?",
        max_length=2000,
        error_messages={"required": "Say why you withdraw your approval."},
    )


class BreakGlassForm(GovernanceForm):
    reason = forms.CharField(
        label="Why start without approval?",
        min_length=10,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="At least 10 characters. Two other people review it afterwards.",
        error_messages={
            "required": "Type the reason for breaking the glass.",
            "min_length": "Type the reason for breaking the glass (at least 10 characters).",
        },
    )
    confirm = forms.BooleanField(
        label="I understand: this rollback starts now without its approvals, is flagged "
        "everywhere, and two other people must review it.",
        error_messages={"required": "Tick the confirmation to break the glass."},
    )


class ReviewForm(GovernanceForm):
    comment = forms.CharField(
        label="What did your review find?",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Say what the review found."},
    )


class GateForm(GovernanceForm):
    comment = forms.CharField(
        label="What did you check before opening the gate?",
        max_length=2000,
        error_messages={"required": "Say what you checked before opening the gate."},
    )
