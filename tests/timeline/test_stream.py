"""The timeline's server-sent events, read through Django's ASGI handler (as uvicorn serves
it): the first event carries what was recorded after the cursor; outsiders get nothing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import AsyncClient
from django.utils import timezone

from tests.timeline.test_timeline import estate, make_rollback  # noqa: F401 - fixtures
from timeline import views
from timeline.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_stream_connections():
    yield
    views.close_stream_connections()  # the streams' pool threads keep theirs open


async def _first_chunks(client: AsyncClient, url: str, n: int = 2) -> tuple[int, str]:
    response = await client.get(url)
    if not response.streaming:
        await sync_to_async(connections.close_all)()
        return response.status_code, ""
    chunks = []
    iterator = aiter(response.streaming_content)
    for _ in range(n):
        chunk = await asyncio.wait_for(anext(iterator), timeout=5)
        chunks.append(chunk.decode() if isinstance(chunk, bytes) else chunk)
    await iterator.aclose()
    await sync_to_async(connections.close_all)()  # the thread the view queried in
    return response.status_code, "".join(chunks)


def run_async(coroutine):
    """Run ``coroutine`` to its end in a thread of its own: Playwright's sync API (the browser
    tests, in the same pytest process) keeps an event loop running in the main thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_the_stream_answers_each_role_as_expected(estate, alice, carol, mallory, monkeypatch):  # noqa: F811
    monkeypatch.setattr(views, "STREAM_SECONDS", 3)
    now = timezone.now()
    Event.objects.create(
        kind="deploy",
        source="ci",
        title="streamed deploy",
        rollback=estate,
        occurred_at=now,
        received_at=now,
    )
    url = f"/rollbacks/{estate.pk}/timeline/stream?after=0.alert.0"

    async def as_user(user):
        client = AsyncClient()
        if user is not None:
            await sync_to_async(client.force_login)(user)
        return await _first_chunks(client, url)

    status, body = run_async(as_user(alice))
    assert status == 200 and body.startswith("retry: 1000")
    assert "event: timeline" in body and "streamed deploy" in body and "\nid: " in body
    assert run_async(as_user(carol))[0] == 200  # auditors read everything
    assert run_async(as_user(mallory))[0] == 404
    assert run_async(as_user(None))[0] == 302  # to the login page
    bad = f"/rollbacks/{estate.pk}/timeline/stream?after=nonsense"

    async def bad_cursor():
        client = AsyncClient()
        await sync_to_async(client.force_login)(alice)
        status = (await client.get(bad)).status_code
        await sync_to_async(connections.close_all)()
        return status

    assert run_async(bad_cursor()) == 400
