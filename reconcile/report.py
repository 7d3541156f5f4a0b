"""The reconciliation section of a post-incident report.

``report_section(rollback)`` returns a plain dict, ready for a template or for Markdown::

    {
        "title": "Reconciliation",
        "state": "done",              # "none" (never ran), "queued", "running" or "done"
        "summary": "2 findings from 2 checks",   # of the newest finished run ("" if none)
        "finished_at": datetime | None,
        "runs": 3,                    # how many reconciliations this rollback had
        "checks": [                   # every check of the newest finished run
            {"system": "orders-db", "check": "duplicate_keys", "outcome": "findings",
             "detail": "orders: 1 finding", "contract_version": 2},
        ],
        "rows": [                     # every finding of every run, oldest first
            {"id": 7, "reconciliation": 3, "system": "orders-db", "check": "duplicate_keys",
             "category": "duplicate_key", "description": "…", "details": {"id": 3, …},
             "compensation": {"kind": "sql", …} or {}, "status": "open" | "added" | "dismissed",
             "decided_by": "alice" or "", "dismiss_reason": "", "followup_step": 12 or None},
        ],
        "columns": [...],             # the finding fields the report's page shows
        "markdown": "…",              # the same, as Markdown (the report adds the heading)
    }

Call it for a rollback the reader may see (the caller checks access); it only reads.
"""

from __future__ import annotations

from typing import Any

from reconcile.models import Finding, Reconciliation


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def report_section(rollback) -> dict[str, Any]:
    runs = list(Reconciliation.objects.filter(rollback=rollback).order_by("requested_at", "id"))
    done = [r for r in runs if r.state == Reconciliation.State.DONE]
    last_done = max(done, key=lambda r: (r.finished_at, r.pk)) if done else None
    newest = runs[-1] if runs else None
    checks = []
    if last_done is not None:
        for result in last_done.results.select_related("system", "contract"):
            checks.append(
                {
                    "system": result.system.slug,
                    "check": result.check_name,
                    "outcome": result.outcome,
                    "detail": result.detail,
                    "contract_version": result.contract.version if result.contract else None,
                }
            )
    rows = [
        {
            "id": f.pk,
            "reconciliation": f.reconciliation_id,
            "system": f.system.slug,
            "check": f.check_name,
            "category": f.category,
            "description": f.description,
            "details": f.details,
            "compensation": f.compensation,
            "status": f.status,
            "decided_by": f.decided_by.get_username() if f.decided_by else "",
            "dismiss_reason": f.dismiss_reason,
            "followup_step": f.followup_step_id,
        }
        for f in Finding.objects.filter(rollback=rollback)
        .select_related("system", "decided_by")
        .order_by("reconciliation__requested_at", "id")
    ]
    section = {
        "title": "Reconciliation",
        "state": newest.state if newest else "none",
        "summary": last_done.summary if last_done else "",
        "finished_at": last_done.finished_at if last_done else None,
        "runs": len(runs),
        "checks": checks,
        "rows": rows,
        "columns": ["id", "system", "check", "category", "details", "status", "decided_by"],
    }
    section["markdown"] = _markdown(section)
    return section


def _markdown(section: dict[str, Any]) -> str:
    lines = []  # the report builder writes the "## Reconciliation" heading
    if section["state"] == "none":
        lines.append("Reconciliation has not run for this rollback.")
        return "\n".join(lines) + "\n"
    if section["finished_at"]:
        lines.append(
            f"{section['runs']} run(s); the last finished {section['finished_at']:%Y-%m-%d %H:%M:%S} UTC: "
            f"{section['summary']}."
        )
    else:
        lines.append(f"{section['runs']} run(s); none has finished yet ({section['state']}).")
    if section["checks"]:
        lines += ["", "| System | Check | Result | Detail |", "|---|---|---|---|"]
        for c in section["checks"]:
            lines.append(
                f"| {_cell(c['system'])} | {_cell(c['check'] or '—')} | {c['outcome']} | {_cell(c['detail'])} |"
            )
    if section["rows"]:
        lines += [
            "",
            "| # | Run | System | Check | Category | Details | Status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in section["rows"]:
            status = r["status"]
            if r["status"] == "dismissed":
                status += f" by {r['decided_by'] or '?'}: {r['dismiss_reason']}"
            elif r["status"] == "added":
                status += f" as step {r['followup_step']}"
            lines.append(
                f"| {r['id']} | {r['reconciliation']} | {_cell(r['system'])} | {_cell(r['check'])} "
                f"| {r['category']} | `{_cell(r['details'])}` | {_cell(status)} |"
            )
    else:
        lines += ["", "No findings."]
    return "\n".join(lines) + "\n"
