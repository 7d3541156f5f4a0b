"""``GET /metrics``: the Prometheus text format, behind a token or an allow-list.

Settings (docs/metrics.md): ``METRICS_TOKEN`` (``UNWIND_METRICS_TOKEN``): a scraper that
sends ``Authorization: Bearer <it>`` is let in from anywhere; ``METRICS_ALLOW``
(``UNWIND_METRICS_ALLOW``): the addresses and networks let in without it (loopback by
default). Anyone else gets a 403, or a 401 when a token was sent and is wrong; the page
holds no ids, but who rolls back what and how often is no business of the internet.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from metrics.collectors import DatabaseCollector


def registry() -> CollectorRegistry:
    """A fresh registry per scrape (as multiprocess mode requires): every process's counters
    from the files, and the database's state."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    registry.register(DatabaseCollector())
    return registry


def _allowed_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOW)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    token = settings.METRICS_TOKEN
    if (
        token
        and scheme.lower() == "bearer"
        and hmac.compare_digest(presented.encode(), token.encode())
    ):
        return None
    if header:
        response = HttpResponse("Wrong metrics token.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if _allowed_address(request.META.get("REMOTE_ADDR", "")):
        return None
    return HttpResponse(
        "Metrics are for the scraper: send its bearer token (METRICS_TOKEN) or scrape from an "
        "allowed address (METRICS_ALLOW).\n",
        status=403,
        content_type="text/plain",
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every metric, in the Prometheus text format."""
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
