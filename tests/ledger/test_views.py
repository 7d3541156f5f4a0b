"""The auditor's pages and the export API: who sees them, search, keyset pages, an entry's
place in its chain, the verification badge, and an export from the browser and the API."""

from __future__ import annotations

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ledger import signing
from ledger.filters import FILTER_NAMES
from ledger.models import Entry, Export, Verification
from ledger.verify_export import verify_export

from .conftest import as_superuser_around_triggers

pytestmark = pytest.mark.django_db


def _text(response) -> str:
    return response.content.decode()


def _ids(response) -> list[int]:
    return [
        int(i) for i in re.findall(r'<th scope="row"><a href="/ledger/(\d+)/">', _text(response))
    ]


# Access ----------------------------------------------------------------------------------------


def test_auditors_and_admins_see_the_ledger_and_others_do_not(
    client, carol, dave, alice, mallory, write
):
    write()
    assert client.get(reverse("ledger")).status_code == 302  # to the login page
    for user, status in ((carol, 200), (dave, 200), (alice, 404), (mallory, 404)):
        client.force_login(user)
        assert client.get(reverse("ledger")).status_code == status, user
        entry = Entry.objects.first()
        assert client.get(reverse("ledger-entry", args=[entry.pk])).status_code == status
        assert client.post(reverse("ledger-verify")).status_code in (
            (302,) if status == 200 else (404,)
        )
        assert client.post(reverse("ledger-export-new"), {"format": "jsonl"}).status_code in (
            (302,) if status == 200 else (404,)
        )


def test_the_nav_link_shows_for_auditors_and_admins_only(client, carol, dave, alice, mallory):
    link = '<li><a href="/ledger/">Ledger</a></li>'
    for user, is_shown in ((carol, True), (dave, True), (alice, False), (mallory, False)):
        client.force_login(user)
        assert (link in _text(client.get(reverse("systems")))) is is_shown, user
    client.force_login(carol)
    assert '<a href="/ledger/" aria-current="page">Ledger</a>' in _text(
        client.get(reverse("ledger"))
    )


# Search and pages --------------------------------------------------------------------------------


def test_filters_narrow_the_entries(client, carol, write):
    a = write(rollback_id=1, action="step.attempt.succeeded", payload={"system": "orders-db"})
    b = write(rollback_id=1, action="step.attempt.failed", outcome="failed", trace_id="b" * 32)
    c = write(rollback_id=2, actor="user:alice", action="rollback.start", reason="go")
    d = write(action="estate.imported", subject_type="system", subject_id="orders-db")
    client.force_login(carol)
    url = reverse("ledger")
    assert _ids(client.get(url)) == [d.pk, c.pk, b.pk, a.pk]
    assert _ids(client.get(url, {"rollback": 1})) == [b.pk, a.pk]
    assert _ids(client.get(url, {"system": "orders-db"})) == [d.pk, a.pk]
    assert _ids(client.get(url, {"actor": "alice"})) == [c.pk]
    assert _ids(client.get(url, {"action": "step.attempt"})) == [b.pk, a.pk]
    assert _ids(client.get(url, {"outcome": "failed"})) == [b.pk]
    assert _ids(client.get(url, {"trace": "B" * 32})) == [b.pk]
    assert _ids(client.get(url, {"chain": "rollback:2"})) == [c.pk]
    at = b.at.isoformat()
    assert _ids(client.get(url, {"from": at})) == [d.pk, c.pk, b.pk]
    assert _ids(client.get(url, {"to": at})) == [a.pk]
    bad = client.get(url, {"rollback": "x", "trace": "nope"})
    assert bad.status_code == 200 and _ids(bad) == []
    assert "Enter a whole number." in _text(bad) and "a trace id is 32 hexadecimal digits" in _text(
        bad
    )


def test_pages_are_keyset_pages_without_offset(client, carol, write):
    entries = [write(rollback_id=1) for _ in range(120)]
    newest_first = [e.pk for e in reversed(entries)]
    client.force_login(carol)
    with CaptureQueriesContext(connection) as queries:
        first = client.get(reverse("ledger"), {"rollback": 1})
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    assert _ids(first) == newest_first[:50]
    older = re.search(r'href="(\?[^"]*before=\d+)" rel="next">Older', _text(first)).group(1)
    assert "rollback=1" in older and 'rel="prev">Newer' not in _text(first)
    second = client.get(reverse("ledger") + older.replace("&amp;", "&"))
    assert _ids(second) == newest_first[50:100]
    third = client.get(
        reverse("ledger")
        + re.search(r'href="(\?[^"]*before=\d+)" rel="next"', _text(second))
        .group(1)
        .replace("&amp;", "&")
    )
    assert _ids(third) == newest_first[100:] and 'rel="next">Older' not in _text(third)
    newer = re.search(r'href="(\?[^"]*after=\d+)" rel="prev">Newer', _text(third)).group(1)
    assert _ids(client.get(reverse("ledger") + newer.replace("&amp;", "&"))) == newest_first[50:100]


def test_the_page_costs_the_same_queries_however_long_the_ledger(client, carol, write):
    counts = []
    for n in (5, 80):
        while Entry.objects.count() < n:
            write(rollback_id=n)
        client.force_login(carol)
        with CaptureQueriesContext(connection) as queries:
            client.get(reverse("ledger"))
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1], counts


def test_an_entry_shows_its_place_in_the_chain(client, carol, write):
    first, second, third = (write(rollback_id=9, action=f"a{i}") for i in range(3))
    client.force_login(carol)
    text = _text(client.get(reverse("ledger-entry", args=[second.pk])))
    assert (
        f'href="/ledger/{first.pk}/" rel="prev"' in text
        and f'href="/ledger/{third.pk}/" rel="next"' in text
    )
    assert second.hash in text and second.prev_hash == first.hash and first.hash in text
    assert "Hash matches its content" in text and "Linked to the entry before it" in text
    assert "rollback:9" in text and "<dd>2</dd>" in text


@pytest.mark.postgres
def test_an_entry_changed_behind_the_triggers_shows_it(client, carol, write):
    first, second = write(rollback_id=9), write(rollback_id=9)
    with as_superuser_around_triggers() as cursor:
        cursor.execute("UPDATE ledger_entry SET reason = 'edited' WHERE id = %s", [second.pk])
        cursor.execute("DELETE FROM ledger_entry WHERE id = %s", [first.pk])
    client.force_login(carol)
    text = _text(client.get(reverse("ledger-entry", args=[second.pk])))
    assert "Content does not match its hash" in text and "The entry before it is missing" in text


# The badge -------------------------------------------------------------------------------------


def test_the_verify_button_runs_and_stores_a_verification_shown_as_a_badge(
    client, carol, ledger_rows
):
    client.force_login(carol)
    assert "Not verified yet" in _text(client.get(reverse("ledger")))
    response = client.post(reverse("ledger-verify"), {"next": "/ledger/?rollback=1"}, follow=True)
    assert response.redirect_chain[-1][0] == "/ledger/?rollback=1"
    text = _text(response)
    assert "Verified" in text and "OK: 8 entries in 3 chains, 0 checkpoints verified" in text
    run = Verification.objects.get()
    assert run.is_ok and run.actor == "user:carol"
    assert Entry.objects.filter(action="ledger.verified", actor="user:carol").exists()


@pytest.mark.postgres
def test_the_badge_names_the_first_bad_entry(client, carol, ledger_rows):
    victim = Entry.objects.get(chain="rollback:2", seq=2)
    with as_superuser_around_triggers() as cursor:
        cursor.execute("UPDATE ledger_entry SET payload = '{\"x\": 1}' WHERE id = %s", [victim.pk])
    client.force_login(carol)
    text = _text(client.post(reverse("ledger-verify"), follow=True))
    assert "Tampering detected" in text
    assert (
        f'chain <code>rollback:2</code>, seq 2, <a href="/ledger/{victim.pk}/">entry #{victim.pk}</a>'
        in text
    )


@pytest.mark.postgres
def test_verify_now_shows_a_global_head_moved_back_instead_of_a_500(client, carol, ledger_rows):
    """Verification's own ledger entry took the place the moved head names, and the page
    answered 500 without showing the tampering it had found (issue 16, finding 10)."""
    last, before_last = Entry.objects.filter(chain="global").order_by("-seq")[:2]
    with as_superuser_around_triggers() as cursor:
        cursor.execute(
            "UPDATE ledger_chainhead SET seq = %s, hash = %s WHERE chain = 'global'",
            [before_last.seq, before_last.hash],
        )
    client.force_login(carol)
    response = client.post(reverse("ledger-verify"), follow=True)
    assert response.status_code == 200
    text = _text(response)
    assert "Tampering detected" in text and "could not be ledgered" in text
    run = Verification.objects.get()
    assert not run.is_ok and run.problems[0]["chain"] == "global"
    assert not Entry.objects.filter(action="ledger.verified").exists()


# Hygiene ---------------------------------------------------------------------------------------


def test_the_pages_have_no_inline_script_or_style_and_label_every_control(
    client, carol, ledger_rows
):
    client.force_login(carol)
    export_page = client.post(
        reverse("ledger-export-new"), {"format": "csv", "rollback": "1"}, follow=True
    )
    pages = [
        client.get(reverse("ledger"), {"rollback": 1}),
        client.get(reverse("ledger-entry", args=[ledger_rows[0].pk])),
        export_page,
    ]
    for page in pages:
        text = _text(page)
        assert page.status_code == 200
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "inline script"
        assert "<style" not in text and " style=" not in text and " on" + "click=" not in text
        assert "Content-Security-Policy" in page.headers
    text = _text(pages[0])
    for control in re.findall(r'<(?:input|select)\b[^>]*\bid="([^"]+)"', text):
        assert f'<label for="{control}">' in text, control


# Exports from the browser and the API ---------------------------------------------------------------


def test_an_auditor_exports_a_rollback_from_the_browser_and_verifies_it(
    client, carol, ledger_rows, tmp_path
):
    client.force_login(carol)
    page = client.get(reverse("ledger"), {"rollback": 1})
    assert '<input type="hidden" name="rollback" value="1">' in _text(page)
    response = client.post(reverse("ledger-export-new"), {"format": "jsonl", "rollback": "1"})
    export = Export.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/ledger/exports/{export.pk}/"
    assert "Available once the file has been downloaded in full." in _text(
        client.get(response["Location"])
    )
    download = client.get(reverse("ledger-export-file", args=[export.pk]))
    assert download.streaming and download["Content-Type"].startswith("application/x-ndjson")
    assert download["Link"] == f'</ledger/exports/{export.pk}/manifest.json>; rel="describedby"'
    body = b"".join(download.streaming_content)
    (tmp_path / "e.jsonl").write_bytes(body)
    manifest = client.get(reverse("ledger-export-manifest", args=[export.pk])).json()
    assert manifest["manifest"]["count"] == 3 and manifest["manifest"]["filters"] == {"rollback": 1}
    assert verify_export(tmp_path / "e.jsonl", manifest, signing.public_key_b64()).startswith(
        "OK: 3 entries"
    )
    assert client.get(reverse("ledger-export-file", args=[export.pk])).status_code == 410
    text = _text(client.get(reverse("ledger-export", args=[export.pk])))
    assert manifest["manifest"]["sha256"] in text and "python -m ledger.verify_export" in text
    entry = Entry.objects.get(action="ledger.exported")
    assert entry.actor == "user:carol" and entry.payload["export"] == str(export.pk)


def test_an_export_is_only_for_whoever_started_it(
    client, carol, dave, django_user_model, ledger_rows
):
    from django.contrib.auth.models import Group

    other = django_user_model.objects.create_user("olga", password="x")
    other.groups.add(Group.objects.get_or_create(name="auditor")[0])
    client.force_login(carol)
    client.post(reverse("ledger-export-new"), {"format": "jsonl"})
    export = Export.objects.get()
    client.force_login(other)
    assert client.get(reverse("ledger-export", args=[export.pk])).status_code == 404
    assert client.get(reverse("ledger-export-file", args=[export.pk])).status_code == 404
    client.force_login(dave)
    assert client.get(reverse("ledger-export", args=[export.pk])).status_code == 200


@pytest.fixture
def tokens(django_user_model):
    from django.contrib.auth.models import Group

    from rollbacks.tokens import token_create

    def make(name: str, *groups: str) -> str:
        user = django_user_model.objects.create_user(name, password="x")
        user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
        return token_create(user=user, name="test")[1]

    return {"audit": make("audit-bot", "auditor"), "ops": make("ops-bot", "operator")}


def test_an_unknown_export_parameter_is_refused_and_exports_nothing(client, tokens, ledger_rows):
    """``rolback=8`` (a typo) used to export the whole ledger (issue 16, finding 15)."""
    entries, exports = Entry.objects.count(), Export.objects.count()
    response = client.get(
        "/api/v1/ledger/export",
        {"rolback": 8, "format": "jsonl"},
        HTTP_AUTHORIZATION=f"Bearer {tokens['audit']}",
    )
    assert response.status_code == 400 and not response.streaming
    assert "rolback" in response.json()["errors"] and "rollback" in response.json()["detail"]
    assert (Entry.objects.count(), Export.objects.count()) == (entries, exports)


def test_the_export_api_streams_a_verifiable_export_to_an_auditor_token(
    client, tokens, ledger_rows, tmp_path
):
    url = "/api/v1/ledger/export"
    assert client.get(url).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {tokens['ops']}").status_code == 403
    bad = client.get(
        url, {"format": "xml", "rollback": "x"}, HTTP_AUTHORIZATION=f"Bearer {tokens['audit']}"
    )
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"format", "rollback"}
    response = client.get(
        url, {"format": "csv", "rollback": 2}, HTTP_AUTHORIZATION=f"Bearer {tokens['audit']}"
    )
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    (tmp_path / "e.csv").write_bytes(b"".join(response.streaming_content))
    manifest_url = re.match(r"<([^>]+)>", response["Link"]).group(1)
    assert client.get(manifest_url).status_code == 401
    manifest = client.get(manifest_url, HTTP_AUTHORIZATION=f"Bearer {tokens['audit']}").json()
    assert verify_export(tmp_path / "e.csv", manifest).startswith("OK: 3 entries")
    entry = Entry.objects.get(action="ledger.exported")
    assert entry.actor == "user:audit-bot" and entry.payload["filters"] == {"rollback": 2}


def test_under_asgi_the_export_streams_chunk_by_chunk(async_client, tokens, ledger_rows):
    """Not read whole into memory first, as Django does with a synchronous iterator."""
    from asgiref.sync import async_to_sync

    async def fetch():
        response = await async_client.get(
            "/api/v1/ledger/export", headers={"Authorization": f"Bearer {tokens['audit']}"}
        )
        return response, [chunk async for chunk in response.streaming_content]

    response, chunks = async_to_sync(fetch)()
    assert response.status_code == 200 and response.is_async
    body = b"".join(chunks)
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert len(lines) == Entry.objects.exclude(action="ledger.exported").count()


def test_times_without_an_offset_are_utc_whatever_the_time_zone(settings):
    from ledger.filters import parse

    settings.TIME_ZONE = "Europe/Paris"
    filters, errors = parse({"from": "2026-01-01T00:00", "to": "2026-01-01T02:00:00+01:00"})
    assert errors == {}
    assert filters == {"from": "2026-01-01T00:00:00.000000Z", "to": "2026-01-01T01:00:00.000000Z"}
    assert parse({"from": "2026-01-02", "to": "2026-01-01"})[1] == {"to": ["must be after From"]}


def test_the_export_api_is_in_the_openapi_schema_with_its_parameters(client):
    schema = client.get("/api/v1/openapi.json").json()
    operation = schema["paths"]["/api/v1/ledger/export"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"format", *FILTER_NAMES}
    assert all(p["in"] == "query" and not p["required"] for p in params.values())
    assert params["format"]["schema"]["enum"] == ["jsonl", "csv"]
    assert params["rollback"]["schema"] == {"type": "integer", "minimum": 1}
    assert params["outcome"]["schema"]["enum"] == ["ok", "refused", "failed"]
    assert params["from"]["schema"]["format"] == "date-time"
    assert params["trace"]["schema"]["pattern"]
    ok = operation["responses"]["200"]
    assert {"application/x-ndjson", "text/csv"} <= set(ok["content"])
    assert {"Link", "Ledger-Export-Id"} <= set(ok["headers"])
    assert {"400", "401", "403", "503"} <= set(operation["responses"])
    scheme = next(iter(operation["security"][0]))
    assert schema["components"]["securitySchemes"][scheme]["scheme"] == "bearer"


def test_a_bad_filter_is_named_in_the_400_and_starts_no_export(client, tokens, ledger_rows):
    before = Entry.objects.count()
    response = client.get(
        "/api/v1/ledger/export",
        {"from": "yesterday", "outcome": "maybe"},
        HTTP_AUTHORIZATION=f"Bearer {tokens['audit']}",
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body["errors"]) == {"from", "outcome"}
    assert "from:" in body["detail"] and "outcome:" in body["detail"]
    assert Entry.objects.count() == before and not Export.objects.exists()
