"""The runbook section of a rollback's report (see reports/builder.py for the shape)."""

from __future__ import annotations

from rollbacks.models import Rollback
from runbooks.models import RunbookInstance


def report_section(rollback: Rollback) -> dict | None:
    """Which runbook version the rollback was instantiated from, for what, with which values.

    ``None`` for a rollback planned from a process run's own forward actions.
    """
    instance = (
        RunbookInstance.objects.filter(rollback=rollback)
        .select_related("version__runbook__incident_type", "requested_by")
        .first()
    )
    if instance is None:
        return None
    runbook = instance.version.runbook
    incident = runbook.incident_type
    rows = [
        {"Field": "Runbook", "Value": f"{runbook.name} ({instance.version})"},
        {
            "Field": "Incident type",
            "Value": f"{incident.name} (scope {incident.get_scope_display()}, "
            f"cause {incident.get_cause_display()})",
        },
        {
            "Field": "Instantiated by",
            "Value": instance.requested_by.get_username() if instance.requested_by else "",
        },
    ]
    rows += [
        {"Field": f"Parameter {name}", "Value": str(value)}
        for name, value in sorted(instance.values.items())
    ]
    return {"key": "runbook", "title": "Runbook", "rows": rows}
