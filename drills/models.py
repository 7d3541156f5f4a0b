"""Faults injected into a drill: which step, what goes wrong, how often it went wrong.

A fault belongs to one step of one drill. It is set while the drill has not started and
fires in the worker that runs the step (``drills/faults.py``); ``fired`` counts the
attempts it hit, so "fail twice" fails two attempts and then lets the step through.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from rollbacks.models import Rollback, Step

MAX_TIMES = 10
MAX_SLOW_S = 300.0


class Fault(models.Model):
    class Kind(models.TextChoices):
        FAIL = "fail", "the step fails"
        SLOW = "slow", "the step slows down"
        KILL = "kill", "the worker is killed mid-step"

    rollback = models.ForeignKey(Rollback, on_delete=models.CASCADE, related_name="drill_faults")
    step = models.ForeignKey(Step, on_delete=models.CASCADE, related_name="drill_faults")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    is_permanent = models.BooleanField(
        default=False,
        help_text="fail: a permanent error (the step waits for a human) instead of a transient one.",
    )
    times = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TIMES)],
        help_text="How many attempts of the step it hits.",
    )
    seconds = models.FloatField(
        default=0,
        validators=[MinValueValidator(0), MaxValueValidator(MAX_SLOW_S)],
        help_text="slow: how long each hit attempt is held up.",
    )
    fired = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rollback", "step", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(times__gte=1, times__lte=MAX_TIMES), name="fault_times_range"
            ),
            models.CheckConstraint(
                condition=models.Q(seconds__gte=0, seconds__lte=MAX_SLOW_S),
                name="fault_seconds_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.describe()} on step #{self.step_id}"

    def describe(self) -> str:
        """'fails permanently once', 'slows down 3 s, twice', 'kills the worker once'."""
        times = {1: "once", 2: "twice"}.get(self.times, f"{self.times} times")
        if self.kind == self.Kind.FAIL:
            return f"fails {'permanently' if self.is_permanent else 'transiently'} {times}"
        if self.kind == self.Kind.SLOW:
            return f"slows down {self.seconds:g} s, {times}"
        return f"kills the worker {times}"

    @property
    def is_used_up(self) -> bool:
        return self.fired >= self.times
