"""Pages for operators: the estate (systems and the dependency map)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from rollbacks import diagram, planning, services
from rollbacks.models import DependencyMap, System


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The landing page after login."""
    return redirect("systems")


@login_required
def system_list(request: HttpRequest) -> HttpResponse:
    """The estate the user can see, with owner, tier and health, and the dependency map."""
    systems = list(System.objects.visible_to(request.user).select_related("team"))
    dep_map = DependencyMap.objects.latest_published()
    visible = {s.slug for s in systems}
    edges = [e for e in services.map_edges(dep_map) if set(planning.endpoints(e)) <= visible]
    by_slug = {s.slug: s for s in systems}
    picture = diagram.layout(sorted(visible), edges)
    boxes = [(box, by_slug[box.slug]) for box in picture.boxes]
    context = {"systems": systems, "dep_map": dep_map, "picture": picture, "boxes": boxes}
    return render(request, "rollbacks/system_list.html", context)
