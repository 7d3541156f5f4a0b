"""The report of a rollback: one builder for post-incident reports and drill reports.

A report is a list of sections. Each comes from a provider named in
``settings.UNWIND_REPORT_SECTIONS`` (dotted paths, in order): a callable
``provider(rollback) -> dict | None`` answering ``title``, ``rows`` (a list of dicts, one
per table row, the same keys in each) and optionally ``markdown`` (else a table is made
from the rows), ``summary`` (a sentence above the table) and ``key`` (the anchor; else from
the title). ``None`` means "nothing to say for this rollback" (the drill section of a real
rollback). Other apps add their sections by adding their provider to the setting.

The page, the Markdown download and the printable HTML download all render this one
structure; see docs/reports.md.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.text import slugify

from rollbacks.models import Rollback


@dataclass
class Section:
    key: str
    title: str
    rows: list[dict[str, Any]]
    markdown: str
    summary: str = ""
    columns: list[str] = field(default_factory=list)


@dataclass
class Report:
    rollback: Rollback
    generated_at: datetime
    sections: list[Section]

    @property
    def is_final(self) -> bool:
        return self.rollback.is_terminal

    @property
    def title(self) -> str:
        kind = "Drill report" if self.rollback.is_drill else "Post-incident report"
        return f"{kind}: rollback #{self.rollback.pk} of {self.rollback.run}"

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)

    def markdown(self) -> str:
        head = [f"# {md_inline(self.title)}", ""]
        if self.rollback.is_drill:
            head += ["> **DRILL**: a rehearsal, not a production rollback.", ""]
        if not self.is_final:
            head += [
                f"> Provisional: the rollback is {self.rollback.get_state_display()}.",
                "",
            ]
        head += [f"Generated {fmt_time(self.generated_at)} (UTC).", ""]
        body = []
        for s in self.sections:
            body += [f"## {md_inline(s.title)}", ""]
            if s.summary:
                body += [html.escape(s.summary, quote=False), ""]
            body += [s.markdown.rstrip(), ""]
        return "\n".join(head + body).rstrip() + "\n"


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 1)


def md_inline(value: Any) -> str:
    """User text on one Markdown line: whitespace folded, HTML escaped (a renderer would
    run raw HTML, and a newline would end a heading or a table row)."""
    return html.escape(" ".join(("" if value is None else str(value)).split()), quote=False)


def _md_cell(value: Any) -> str:
    return md_inline(value).replace("\\", "\\\\").replace("|", "\\|") or "—"


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (pipes escaped, newlines folded)."""
    if not rows:
        return "_Nothing to report._"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def providers() -> list[Callable[[Rollback], dict | None]]:
    return [import_string(path) for path in settings.UNWIND_REPORT_SECTIONS]


def _section(raw: dict[str, Any]) -> Section:
    rows = list(raw.get("rows") or [])
    columns = list(raw.get("columns") or (rows[0].keys() if rows else []))
    return Section(
        key=raw.get("key") or slugify(raw["title"]),
        title=raw["title"],
        rows=rows,
        markdown=raw.get("markdown") or markdown_table(rows, columns),
        summary=raw.get("summary", ""),
        columns=columns,
    )


def report_build(rollback: Rollback) -> Report:
    """Every configured section of ``rollback``'s report, in the setting's order."""
    rollback = Rollback.objects.select_related("run", "requested_by", "dependency_map").get(
        pk=rollback.pk
    )
    sections = [_section(raw) for p in providers() if (raw := p(rollback)) is not None]
    return Report(rollback=rollback, generated_at=timezone.now(), sections=sections)
