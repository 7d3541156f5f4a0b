"""The instantiation form: one labelled field per parameter of the runbook version, then the
reason and the drill box. The service checks everything again (the API calls it too)."""

from __future__ import annotations

from django import forms

from rollbacks.forms import RollbackPlanForm
from runbooks.models import RunbookVersion

FIELD_PREFIX = "param_"


class InstantiateForm(RollbackPlanForm):
    def __init__(self, *args, version: RunbookVersion, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields[
            "reason"
        ].help_text = "Why this runbook is being used: the approvers and the ledger read it."
        self.fields["reason"].error_messages["required"] = "Say why this runbook is being used."
        params = {}
        for spec in version.parameters:
            label = spec.get("label") or spec["name"].replace("_", " ").capitalize()
            common = {
                "label": label,
                "help_text": spec.get("help", ""),
                "required": spec.get("required", True) and spec.get("default") is None,
                "initial": spec.get("default"),
            }
            if spec["type"] == "int":
                field: forms.Field = forms.IntegerField(**common)
            elif spec["type"] == "choice":
                choices = [(c, c) for c in spec["choices"]]
                if not common["required"]:
                    choices.insert(0, ("", "—"))
                field = forms.ChoiceField(choices=choices, **common)
            else:
                field = forms.CharField(max_length=500, **common)
            field.error_messages["required"] = f"{label} is required."
            params[FIELD_PREFIX + spec["name"]] = field
        # Parameters first, then reason and drill.
        self.fields = params | dict(self.fields)

    def parameter_fields(self):
        return [self[name] for name in self.fields if name.startswith(FIELD_PREFIX)]

    def values(self) -> dict:
        return {
            name.removeprefix(FIELD_PREFIX): value
            for name, value in self.cleaned_data.items()
            if name.startswith(FIELD_PREFIX)
        }

    def add_service_error(self, exc) -> None:
        """The service names ``params.<name>``: show it next to that parameter's field."""
        if hasattr(exc, "error_dict"):
            for field, messages in exc.message_dict.items():
                name = FIELD_PREFIX + field.removeprefix("params.")
                if field.startswith("params.") and name in self.fields:
                    self.add_error(name, messages)
                elif field in self.fields:
                    self.add_error(field, messages)
                else:
                    self.add_error(None, [f"{field}: {m}" for m in messages])
        else:
            self.add_error(None, exc.messages)
