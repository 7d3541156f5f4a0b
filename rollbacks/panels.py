"""The rollback page's panels from other apps, declared in ``settings.UNWIND_ROLLBACK_PANELS``.

Imports flow the other way (timeline, reconcile, drills, reports, dashboard, runbooks import
rollbacks), so the page finds what they add by name, the way reports find their sections. The setting maps each panel's key (the DOM id of its
root element and the name of its partial) to its provider, in the page's order:

```python
def provider(request, rollback, page: PanelPage) -> Panel | None: ...
```

A provider reads what its panel shows (or nothing, for a panel that loads itself) and
returns its template and context, or None to leave it out. A panel whose content can still
change polls ``rollback-panel`` (``/rollbacks/<id>/panels/<key>``) until it cannot: its
template says so with ``panel.url`` while ``panel.is_settled`` is false.
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

REGIONS = ("facts", "header", "body")  # the facts list, under the title, after the steps


@dataclass(frozen=True)
class PanelPage:
    """What the page already knows and a provider may use."""

    can_act: bool  # the user may operate this rollback
    is_live: bool  # the rollback has not finished (or steps still run after an abort)
    systems: list[str]  # the slugs of the systems it touches, sorted


@dataclass
class Panel:
    template: str
    context: dict[str, Any] = field(default_factory=dict)
    region: str = "body"
    is_settled: bool = True  # nothing it shows can change any more
    url: str = ""  # where it polls itself while not settled
    key: str = ""  # its key in the setting


@cache
def providers() -> dict[str, Callable[..., Panel | None]]:
    return {key: import_string(path) for key, path in settings.UNWIND_ROLLBACK_PANELS.items()}


def _made(key: str, provider, request, rollback, page) -> Panel | None:
    panel = provider(request, rollback, page)
    if panel is not None:
        panel.key = key
        panel.url = reverse("rollback-panel", args=[rollback.pk, key])
    return panel


def build(request: HttpRequest, rollback: Rollback, page: PanelPage) -> dict[str, list[Panel]]:
    """Every panel of the page, by region, in the declared order."""
    regions: dict[str, list[Panel]] = {region: [] for region in REGIONS}
    for key, provider in providers().items():
        if panel := _made(key, provider, request, rollback, page):
            regions[panel.region].append(panel)
    return regions


def find(request: HttpRequest, rollback: Rollback, page: PanelPage, key: str) -> Panel | None:
    """The one panel named ``key`` (for its poll: the others cost nothing), or None."""
    provider = providers().get(key)
    return _made(key, provider, request, rollback, page) if provider else None
