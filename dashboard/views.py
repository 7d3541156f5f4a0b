"""The dashboard's pages: the overview, a system's health history, the metrics."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django_htmx.http import HttpResponseClientRedirect

from dashboard import charts, metrics, overview
from dashboard.forms import MetricsFilterForm
from rollbacks.models import HealthCheck, Rollback, Step, System

HISTORY_ROWS = 100  # checks in the history table and the strip
OVERVIEW = "dashboard/overview.html"


def home(request: HttpRequest) -> HttpResponse:
    """The overview: active rollbacks, my pending approvals, health, failures, escalations."""
    if not request.user.is_authenticated:
        # A session that expired under an open overview: its poll takes the whole page to
        # the login page rather than swapping the login form into the fragment.
        login = redirect_to_login(request.get_full_path())
        return HttpResponseClientRedirect(login["Location"]) if request.htmx else login
    context = {"o": overview.overview(request.user), "poll_s": settings.DASHBOARD_POLL_S}
    template = OVERVIEW + "#overview-live" if request.htmx else OVERVIEW
    response = render(request, template, context)
    patch_vary_headers(response, ("HX-Request",))  # the page and its fragment share a URL
    return response


def _get_system_for_user(user, slug: str) -> System:
    system = System.objects.visible_to(user).filter(slug=slug).select_related("team").first()
    if system is None:
        raise Http404("No such system.")
    return system


@login_required
def system_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """One system: its health history (strip and table) and the rollbacks that touched it."""
    system = _get_system_for_user(request.user, slug)
    checks = list(HealthCheck.objects.filter(system=system).order_by("-checked_at")[:HISTORY_ROWS])
    counts = {status: 0 for status in System.Health.values}
    for check in checks:
        counts[check.status] += 1
    touched = Step.objects.filter(system=system).values("rollback_id")
    rollbacks = (
        Rollback.objects.visible_to(request.user)
        .filter(pk__in=touched)
        .select_related("run")
        .order_by("-created_at", "-pk")[:50]
    )
    context = {
        "system": system,
        "checks": checks,
        "strip": charts.health_strip(checks),
        "counts": [(System.Health(k).label, k, n) for k, n in counts.items() if n],
        "rollbacks": rollbacks,
        "retention_days": settings.HEALTH_HISTORY_RETENTION_DAYS,
    }
    return render(request, "dashboard/system_detail.html", context)


@login_required
def metrics_page(request: HttpRequest) -> HttpResponse:
    """Rollback metrics over a period, per day or week and per system, drills apart."""
    systems = list(System.objects.visible_to(request.user).order_by("slug"))
    form = MetricsFilterForm(request.GET, systems=systems, today=timezone.localdate())
    if form.is_bound and not form.is_valid():
        return render(request, "dashboard/metrics.html", {"form": form}, status=400)
    result = metrics.compute(request.user, form.filters())
    return render(request, "dashboard/metrics.html", {"form": form, "m": result, **_charts(result)})


def _period_label(row, bucket: str) -> str:
    period = (
        timezone.localtime(row["period"]) if timezone.is_aware(row["period"]) else row["period"]
    )
    return f"week of {period:%Y-%m-%d}" if bucket == "week" else f"{period:%Y-%m-%d}"


def _charts(m: metrics.Metrics) -> dict:
    bucket = m.filters.bucket
    over_time = [{**row, "label": _period_label(row, bucket)} for row in m.over_time]
    outcomes = [(label, m.compensation[key]) for key, (label, _) in metrics.OUTCOMES.items()]
    return {
        "over_time": over_time,
        "outcomes": outcomes,
        "charts": {
            "count": charts.bar_chart("Rollbacks", [(r["label"], r["count"]) for r in over_time]),
            "latency": charts.bar_chart(
                "Mean rollback latency", [(r["label"], r["latency_avg"]) for r in over_time]
            ),
            "approval": charts.bar_chart(
                "Mean time to approval", [(r["label"], r["approval_avg"]) for r in over_time]
            ),
            "mttr": charts.bar_chart("Mean MTTR", [(r["label"], r["mttr_avg"]) for r in over_time]),
            "stages": charts.bar_chart(
                "Mean stage duration", [(f"stage {r['index']}", r["avg"]) for r in m.stages]
            ),
            "outcomes": charts.bar_chart("Compensation outcomes", outcomes),
            "system_latency": charts.bar_chart(
                "Mean latency per system",
                [(r["system__slug"], r["latency_avg"]) for r in m.per_system],
            ),
        },
    }
