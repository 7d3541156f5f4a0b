"""The rollback page's panels from other apps, declared in ``settings.UNWIND_ROLLBACK_PANELS``.

Imports flow the other way (governance, timeline, reconcile, drills, reports, dashboard,
runbooks import rollbacks), so the page finds what they add by name, the way reports find
their sections. The setting maps each panel's key (the DOM id of its root element and the
name of its partial) to its provider, in the page's order:

```python
def provider(request, rollback, page: PanelPage) -> Panel | None: ...
```

A provider reads what its panel shows (or nothing, for a panel that loads itself) and
returns its template and context, or None to leave it out. Where it goes is its region:

1. ``facts``, ``header``, ``body``: around the polled status, rendered with the whole page.
   A panel whose content can still change polls ``rollback-panel``
   (``/rollbacks/<id>/panels/<key>``) until it cannot: its template says so with
   ``panel.url`` while ``panel.is_settled`` is false.
2. ``action`` (the first screen's "what needs you now"), ``controls`` (beside Pause and
   Abort), ``status`` (under them), ``stage`` (inside each stage, rendered once per stage
   with ``stage`` in its context) and ``end`` (the end of the status): *live* panels, part of
   the ``rollback-status`` fragment, re-rendered by its one-second poll whenever their
   ``fingerprint`` (or anything else in the fragment) changes. They may tell the status line
   what the rollback waits for (``headline``; with ``is_halting`` it reads "halted"), mark a
   control this user must use now (``needs_you``), and add tags to the title or a stage.

A live panel's provider says so with ``@live`` (the poll calls only those, the whole page
the others once). Providers of one app that share a read keep it in ``page.memo``; a
provider that reads a relation of the rollback declares it with ``@joins(...)``, so the
page's own query joins it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse
from django.utils.module_loading import import_string

from rollbacks.models import Rollback

REGIONS = ("facts", "header", "body")  # around the status, rendered with the whole page
LIVE_REGIONS = ("action", "controls", "status", "stage", "end")  # inside the polled status


@dataclass(frozen=True)
class PanelPage:
    """What the page already knows and a provider may use."""

    can_act: bool  # the user may operate this rollback
    is_live: bool  # the rollback has not finished (or steps still run after an abort)
    systems: list[str]  # the slugs of the systems it touches, sorted
    # Live panels only: the page's stages, each with ``step_list`` (its steps' summaries,
    # with their systems and teams), and bound forms whose errors the page shows (a 400).
    stages: list[Any] = field(default_factory=list)
    forms: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)  # reads shared by one app's providers


@dataclass
class Panel:
    template: str
    context: dict[str, Any] = field(default_factory=dict)
    region: str = "body"
    is_settled: bool = True  # nothing it shows can change any more
    url: str = ""  # where it polls itself while not settled
    key: str = ""  # its key in the setting
    # Live panels (LIVE_REGIONS):
    fingerprint: str = ""  # everything it shows that can change, for the status poll
    headline: str = ""  # what the rollback waits for, in the status line
    is_halting: bool = False  # the headline is why a running rollback is halted
    needs_you: bool = False  # it holds a control this user should use now
    tags: list[str] = field(default_factory=list)  # beside the page's title
    stage_tags: dict[int, list[str]] = field(default_factory=dict)  # beside a stage's title


def live(provider: Callable) -> Callable:
    """Mark a provider as a live panel's (its panel goes in one of LIVE_REGIONS)."""
    provider.is_live = True  # type: ignore[attr-defined]
    return provider


def joins(*related: str) -> Callable:
    """Declare the rollback's relations a provider reads (``select_related`` names)."""

    def declare(provider: Callable) -> Callable:
        provider.joins = related  # type: ignore[attr-defined]
        return provider

    return declare


@cache
def providers() -> dict[str, Callable[..., Panel | None]]:
    return {key: import_string(path) for key, path in settings.UNWIND_ROLLBACK_PANELS.items()}


def related() -> tuple[str, ...]:
    """What the page's rollback query joins for the providers (``@joins``)."""
    names = [name for p in providers().values() for name in getattr(p, "joins", ())]
    return tuple(dict.fromkeys(names))


def _made(key: str, provider, request, rollback, page) -> Panel | None:
    panel = provider(request, rollback, page)
    if panel is not None:
        panel.key = key
        panel.url = reverse("rollback-panel", args=[rollback.pk, key])
    return panel


def build(
    request: HttpRequest, rollback: Rollback, page: PanelPage, *, live: bool = False
) -> dict[str, list[Panel]]:
    """Every panel of the page (``live``: of the polled status), by region, in the
    declared order."""
    regions: dict[str, list[Panel]] = {r: [] for r in (LIVE_REGIONS if live else REGIONS)}
    for key, provider in providers().items():
        if getattr(provider, "is_live", False) != live:
            continue
        if panel := _made(key, provider, request, rollback, page):
            regions[panel.region].append(panel)
    return regions


def find(request: HttpRequest, rollback: Rollback, page: PanelPage, key: str) -> Panel | None:
    """The one self-polling panel named ``key`` (the others cost nothing), or None; live
    panels come with the status fragment, not on their own."""
    provider = providers().get(key)
    if provider is None or getattr(provider, "is_live", False):
        return None
    return _made(key, provider, request, rollback, page)
