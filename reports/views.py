"""A rollback's report: the page, and downloads as Markdown and as printable HTML.

Whoever may see the rollback may read and download its report; every download is
recorded in the ledger (``report.exported``), like any export."""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string

import ledger.services as ledger
from reports.builder import Report, report_build
from rollbacks import access

PRINT_CSS = Path(settings.BASE_DIR) / "static" / "css" / "report-print.css"


@cache
def print_css() -> tuple[str, str]:
    """The print stylesheet, embedded in the download so it prints on its own, and its
    CSP hash (the only inline style that response allows)."""
    text = PRINT_CSS.read_text()
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return text, f"'sha256-{digest}'"


def _filename(report: Report, ext: str) -> str:
    kind = "drill" if report.rollback.is_drill else "rollback"
    return f"{kind}-{report.rollback.pk}-report.{ext}"


def _exported(request: HttpRequest, report: Report, fmt: str, body: bytes) -> None:
    rollback = report.rollback
    with transaction.atomic():
        ledger.record(
            actor=request.user,
            action="report.exported",
            subject=rollback,
            rollback_id=rollback.pk,
            trace_id=rollback.trace_id,
            payload={
                "format": fmt,
                "is_drill": rollback.is_drill,
                "is_final": report.is_final,
                "sections": [s.key for s in report.sections],
                "sha256": hashlib.sha256(body).hexdigest(),
            },
        )


def _download(content: str, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content.encode(), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
def report_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The report of a rollback (a drill's includes its faults), to read and download."""
    rollback = access.get_rollback_for_user(request.user, pk)
    return render(request, "reports/report_page.html", {"report": report_build(rollback)})


@login_required
def report_markdown(request: HttpRequest, pk: int) -> HttpResponse:
    """The report as a Markdown file (ledgered)."""
    report = report_build(access.get_rollback_for_user(request.user, pk))
    text = report.markdown()
    _exported(request, report, "markdown", text.encode())
    return _download(text, "text/markdown; charset=utf-8", _filename(report, "md"))


@login_required
def report_html(request: HttpRequest, pk: int) -> HttpResponse:
    """The report as one printable HTML file, its print stylesheet inside (ledgered)."""
    report = report_build(access.get_rollback_for_user(request.user, pk))
    css, css_hash = print_css()
    html = render_to_string(
        "reports/report_print.html", {"report": report, "print_css": css}, request
    )
    _exported(request, report, "html", html.encode())
    response = _download(html, "text/html; charset=utf-8", _filename(report, "html"))
    response._csp_update = {"style-src": [css_hash]}  # django-csp: this one stylesheet only
    return response
