"""The form that adds a fault to a drill, on the rollback page (before the drill starts)."""

from __future__ import annotations

from django import forms

from drills.models import MAX_SLOW_S, MAX_TIMES, Fault


class FaultForm(forms.Form):
    step = forms.TypedChoiceField(label="Step", coerce=int, choices=())
    kind = forms.ChoiceField(label="What goes wrong", choices=Fault.Kind.choices)
    times = forms.IntegerField(
        label="How many attempts it hits", min_value=1, max_value=MAX_TIMES, initial=1
    )
    permanent = forms.BooleanField(
        label="Fail permanently (the step waits for a human)", required=False
    )
    seconds = forms.FloatField(
        label="Slow-down, in seconds", min_value=0, max_value=MAX_SLOW_S, initial=0, required=False
    )

    def __init__(self, *args, steps=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["step"].choices = [
            (s.pk, f"Step {s.pk}: undo {s.forward_action.action_type} on {s.system.slug}")
            for s in steps
        ]
