"""How the CLI draws what the API answers: Rich tables for a terminal, plain lines for a log."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

TERMINAL = ("succeeded", "failed", "partially_rolled_back", "aborted")
NEEDS_HUMAN = ("waiting_human", "failed")

STATE_STYLES = {
    "succeeded": "green",
    "skipped": "yellow",
    "running": "cyan",
    "retry_wait": "yellow",
    "waiting_human": "bold magenta",
    "halted": "bold magenta",
    "failed": "bold red",
    "partially_rolled_back": "yellow",
    "aborted": "red",
    "cancelled": "dim",
    "pending": "dim",
    "awaiting_approval": "magenta",
}


def styled(state: str) -> Text:
    return Text(state.replace("_", " "), style=STATE_STYLES.get(state, ""))


def runs_table(runs: list[dict]) -> Table:
    table = Table(title="Process runs", title_justify="left")
    for column in ("id", "process", "external id", "status", "actions", "rollback", "failure"):
        table.add_column(column, overflow="fold")
    for run in runs:
        rollback = run.get("rollback")
        rb = Text("—", style="dim")
        if rollback:
            rb = Text(f"#{rollback['id']} ") + styled(rollback["state"])
            if rollback["is_drill"]:
                rb += Text(" (drill)", style="dim")
        table.add_row(
            str(run["id"]),
            run["process"],
            run["external_id"],
            styled(run["status"]),
            str(run["actions_reported"]),
            rb,
            run["failure_reason"],
        )
    return table


def _step_note(step: dict) -> str:
    if step.get("state") in NEEDS_HUMAN:
        return human_hint(step)
    return step.get("last_error") or step.get("human_note") or step.get("manual_reason") or ""


def human_hint(step: dict) -> str:
    """What to type when a step waits for a human."""
    if step.get("is_manual") and step["state"] == "waiting_human":
        why = f"{step['manual_reason']}: " if step.get("manual_reason") else ""
        return f"{why}do it by hand, then: unwind resolve {step['id']} --note '…'"
    error = step.get("last_error") or "it failed"
    return f"{error} → unwind retry {step['id']}, or unwind skip {step['id']} --reason '…'"


def rollback_view(rollback: dict) -> Group:
    """The rollback as a heading and one table of steps, grouped by stage."""
    heading = Text.assemble(
        (f"Rollback #{rollback['id']}", "bold"),
        " of run ",
        str(rollback["run"]),
        ": ",
        styled(rollback["state"]),
    )
    if rollback.get("is_drill"):
        heading += Text("  DRILL", style="bold yellow")
    lines: list[Any] = [heading, Text(f"reason: {rollback['reason']}", style="dim")]
    if rollback.get("requested_by"):
        lines.append(Text(f"requested by: {rollback['requested_by']}", style="dim"))
    table = Table(show_lines=False, expand=False)
    for column in ("stage", "step", "system", "action", "kind", "state", "tries", "note"):
        table.add_column(column, overflow="fold")
    for stage in rollback["stages"]:
        for n, step in enumerate(stage["steps"]):
            tries = ""
            if "attempt_count" in step and not step["is_manual"]:  # a human's step has no tries
                tries = f"{step['attempt_count']}/{step['max_attempts']}"
            table.add_row(
                Text(f"{stage['index']} ") + styled(stage["state"]) if n == 0 else Text(""),
                str(step["id"]),
                step["system"],
                step["action_type"],
                "manual" if step["is_manual"] else step["kind"],
                styled(step["state"]),
                tries,
                _step_note(step),
            )
    lines.append(table)
    done = sum(
        s["state"] in ("succeeded", "skipped") for st in rollback["stages"] for s in st["steps"]
    )
    total = sum(len(st["steps"]) for st in rollback["stages"])
    lines.append(Text(f"{done} of {total} steps done"))
    if rollback.get("outcome_summary"):
        lines.append(Text(rollback["outcome_summary"], style="bold"))
    return Group(*lines)


def snapshot(rollback: dict) -> dict[str, str]:
    """Every state worth a line when it changes: the rollback's, each stage's, each step's."""
    states = {"rollback": rollback["state"]}
    for stage in rollback["stages"]:
        states[f"stage {stage['index']}"] = stage["state"]
        for step in stage["steps"]:
            tries = (
                f" (try {step['attempt_count']}/{step['max_attempts']})"
                if step.get("attempt_count")
                else ""
            )
            states[
                f"stage {stage['index']} step {step['id']} {step['system']} {step['action_type']}"
            ] = step["state"] + (
                tries if step["state"] in ("running", "retry_wait", "failed") else ""
            )
    return states


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    out = []
    for key, state in after.items():
        if before.get(key) != state:
            was = before.get(key)
            out.append(f"{key}: {was} → {state}" if was else f"{key}: {state}")
    return out
