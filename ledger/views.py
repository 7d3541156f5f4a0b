"""The auditor's pages (search, entry detail, verification badge, exports) and an export's
manifest (the export API itself is ``ledger/api.py``). Auditors and admins only: everyone
else gets 404, as for anything they may not see."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.module_loading import import_string
from django.views.decorators.http import require_GET, require_POST

from ledger import access, signing
from ledger import filters as ledger_filters
from ledger.canonical import GENESIS, canonical, entry_hash
from ledger.exports import CONTENT_TYPES, export_create, export_stream
from ledger.models import Checkpoint, Entry, Export, Verification
from ledger.verification import verification_run

PER_PAGE = 50
TOKEN_AUTHENTICATE = "rollbacks.tokens.token_authenticate"


# Helpers ------------------------------------------------------------------------------------


def _in_utc(view):
    """The ledger speaks UTC (its canonical times are UTC): show and read times in UTC,
    whatever TIME_ZONE the rest of the app uses."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        with timezone.override(UTC):
            return view(request, *args, **kwargs)

    return wrapped


def _page(queryset, *, before: int | None, after: int | None) -> tuple[list[Entry], bool, bool]:
    """One page by keyset on id, newest first: (entries, has_newer, has_older). No OFFSET:
    each page is an index range scan, however deep."""
    if after is not None:
        rows = list(queryset.filter(id__gt=after).order_by("id")[: PER_PAGE + 1])
        has_newer = len(rows) > PER_PAGE
        entries = rows[:PER_PAGE][::-1]
        has_older = bool(entries) and queryset.filter(id__lt=entries[-1].id).exists()
        return entries, has_newer, has_older
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    rows = list(queryset.order_by("-id")[: PER_PAGE + 1])
    entries = rows[:PER_PAGE]
    has_older = len(rows) > PER_PAGE
    has_newer = before is not None and bool(entries)
    return entries, has_newer, has_older


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def streaming_response(
    request: HttpRequest, chunks: Iterator[bytes], export: Export
) -> StreamingHttpResponse:
    # Under ASGI a synchronous iterator would be read whole into memory first (Django does
    # that and warns); hand it over one chunk at a time instead.
    content = _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type=CONTENT_TYPES[export.format])
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    manifest_url = reverse("ledger-export-manifest", args=[export.pk])
    response["Link"] = f'<{manifest_url}>; rel="describedby"'
    response["Ledger-Export-Id"] = str(export.pk)
    response["Cache-Control"] = "no-store"
    return response


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    take = sync_to_async(next, thread_sensitive=True)
    try:
        while (chunk := await take(chunks, None)) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()


def _bearer_user(request: HttpRequest) -> Any | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    # Looked up by name so that the ledger imports no other app.
    return import_string(TOKEN_AUTHENTICATE)(token.strip())


def _api_error(status: int, detail: str, errors: dict | None = None) -> JsonResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors:
        body["errors"] = errors
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="unwind"'
    return response


# The auditor's pages ------------------------------------------------------------------------


@login_required
@require_GET
@_in_utc
def entry_list(request: HttpRequest) -> HttpResponse:
    """Search the ledger: filters, keyset pages, the verification badge, exports."""
    access.require_auditor(request.user)
    form = ledger_filters.FilterForm(request.GET or None)
    filters = form.filters() if form.is_bound and form.is_valid() else {}
    if form.is_bound and not form.is_valid():
        entries, has_newer, has_older = [], False, False
    else:
        entries, has_newer, has_older = _page(
            ledger_filters.matching(filters),
            before=_int(request.GET.get("before")),
            after=_int(request.GET.get("after")),
        )
    query = urlencode(
        {k: v for k, v in request.GET.items() if k in ledger_filters.FILTER_NAMES and v}
    )
    context = {
        "form": form,
        "filters": filters,
        "filter_items": [
            (k, request.GET[k]) for k in ledger_filters.FILTER_NAMES if request.GET.get(k)
        ],
        "entries": entries,
        "newer_url": f"?{query}&after={entries[0].id}" if has_newer else "",
        "older_url": f"?{query}&before={entries[-1].id}" if has_older else "",
        "verification": Verification.objects.order_by("-started_at").first(),
        "checkpoint": Checkpoint.objects.order_by("-seq").first(),
        "exports": Export.objects.filter(created_by_user=request.user).order_by("-created_at")[:5],
        "key": _key_facts(),
    }
    return render(request, "ledger/entry_list.html", context)


def _key_facts() -> dict[str, str] | None:
    try:
        public = signing.public_key_b64()
    except ImproperlyConfigured:
        return None
    return {"public": public, "id": signing.key_id(public)}


@login_required
@require_GET
@_in_utc
def entry_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One entry, its place in its chain and whether it verifies there."""
    access.require_auditor(request.user)
    entry = get_object_or_404(Entry, pk=pk)
    neighbours = {
        e.seq: e
        for e in Entry.objects.filter(chain=entry.chain, seq__in=[entry.seq - 1, entry.seq + 1])
    }
    previous, following = neighbours.get(entry.seq - 1), neighbours.get(entry.seq + 1)
    fields = entry.hashed_fields()
    if entry.seq == 1:
        is_link_ok: bool | None = entry.prev_hash == GENESIS
    else:
        is_link_ok = entry.prev_hash == previous.hash if previous else None  # None: it is gone
    context = {
        "entry": entry,
        "previous": previous,
        "next": following,
        "is_hash_ok": entry_hash(fields) == entry.hash,
        "is_link_ok": is_link_ok,
        "canonical": canonical(fields),
        "payload": json.dumps(entry.payload, indent=2, sort_keys=True),
        "chain_url": reverse("ledger") + "?" + urlencode({"chain": entry.chain}),
    }
    return render(request, "ledger/entry_detail.html", context)


@login_required
@require_POST
def verify_now(request: HttpRequest) -> HttpResponse:
    """Re-run the verification and store it for the badge."""
    access.require_auditor(request.user)
    run = verification_run(actor=request.user)
    level = messages.SUCCESS if run.is_ok else messages.ERROR
    messages.add_message(request, level, run.summary())
    return redirect(request.POST.get("next") if _is_local(request.POST.get("next")) else "ledger")


def _is_local(url: str | None) -> bool:
    return bool(url) and url.startswith("/ledger/") and "//" not in url


@login_required
@require_POST
@_in_utc
def export_new(request: HttpRequest) -> HttpResponse:
    """Start an export of the current filter (ledgered), then go to its page."""
    access.require_auditor(request.user)
    filters, errors = ledger_filters.parse(request.POST)
    fmt = request.POST.get("format", "")
    if errors or fmt not in Export.Format.values:
        messages.error(request, "The export was not started: check the filters and the format.")
        return redirect("ledger")
    try:
        export = export_create(actor=request.user, format=fmt, filters=filters)
    except ImproperlyConfigured as exc:
        messages.error(request, f"The export was not started: {exc}")
        return redirect("ledger")
    return HttpResponseRedirect(reverse("ledger-export", args=[export.pk]))


@login_required
@require_GET
@_in_utc
def export_detail(request: HttpRequest, pk) -> HttpResponse:
    """An export: download its file, then its manifest, and how to verify them."""
    export = access.get_export_for_user(request.user, pk)
    return render(
        request,
        "ledger/export_detail.html",
        {
            "export": export,
            "manifest": (export.manifest or {}).get("manifest"),
            "filter_items": sorted(export.filters.items()),
        },
    )


@login_required
@require_GET
def export_file(request: HttpRequest, pk) -> HttpResponse:
    """The export's file, streamed; once, since its manifest describes that one stream."""
    export = access.get_export_for_user(request.user, pk)
    if export.completed_at is not None:
        return HttpResponse(
            "This export was downloaded in full already; start a new export for a new file.",
            status=410,
            content_type="text/plain; charset=utf-8",
        )
    return streaming_response(request, export_stream(export), export)


@require_GET
def export_manifest(request: HttpRequest, pk) -> HttpResponse:
    """The signed manifest of an export whose file was streamed in full (session or token)."""
    user = request.user if request.user.is_authenticated else _bearer_user(request)
    if user is None:
        return _api_error(401, "Log in or send Authorization: Bearer <token>.")
    export = access.get_export_for_user(user, pk)
    if export.manifest is None:
        return _api_error(409, "The export's file has not been downloaded in full yet.")
    response = JsonResponse(export.manifest, json_dumps_params={"indent": 2, "sort_keys": True})
    response["Content-Disposition"] = f'attachment; filename="{export.manifest_filename}"'
    return response
