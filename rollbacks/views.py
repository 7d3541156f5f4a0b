"""Pages for operators: the estate, process runs, and rollbacks with their live status."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import (
    Case,
    Count,
    IntegerField,
    OuterRef,
    Prefetch,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from rollbacks import access, diagram, engine, forms, panels, planning, services
from rollbacks.models import (
    Attempt,
    DependencyMap,
    ForwardAction,
    ProcessRun,
    Rollback,
    Stage,
    Step,
    System,
)

DETAIL = "rollbacks/rollback_detail.html"
PER_PAGE = 50
COMPACT_CHARS = 160  # longer JSON is cut in the summary and shown whole in a <details>
R = Rollback.State
S = Step.State


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


# Helpers ------------------------------------------------------------------------------------


def _page(request: HttpRequest, queryset) -> Page:
    return Paginator(queryset, PER_PAGE).get_page(request.GET.get("page"))


def _count(queryset, outer: str) -> Coalesce:
    """A correlated COUNT: unlike ``Count()``, it is not narrowed by a ``visible_to`` join."""
    counted = queryset.filter(**{outer: OuterRef("pk")}).order_by().values(outer)
    return Coalesce(
        Subquery(counted.annotate(n=Count("pk")).values("n"), output_field=IntegerField()),
        Value(0),
    )


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _compact(value: Any) -> dict[str, Any] | None:
    """A one-line rendering of a JSON value, cut when long (the full text goes with it)."""
    if value is None or value == {}:
        return None
    text = _json(value)
    is_cut = len(text) > COMPACT_CHARS
    full = json.dumps(value, indent=2, sort_keys=True, default=str) if is_cut else text
    return {"short": text[: COMPACT_CHARS - 1] + "…" if is_cut else text, "full": full}


def _spec_rows(spec: dict) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The rendered compensation as (key, label, value) rows, the readable part first:
    ``POST http://…`` for a request, the statement of a SQL step, a manual step's instructions."""
    rest = {k: v for k, v in spec.items() if k != "kind"}
    rows: list[tuple[str, Any]] = []
    if spec.get("kind") == "http" and "url" in rest:
        rows.append(("request", f"{rest.pop('method', 'POST')} {rest.pop('url')}"))
    rows.extend((key, rest.pop(key)) for key in ("statement", "instructions") if key in rest)
    rows.extend(sorted(rest.items()))
    return [(key, key.replace("_", " "), _compact(value)) for key, value in rows]


def _service_error(exc: ValidationError) -> str:
    return " ".join(exc.messages)


def _governance_page() -> ModuleType | None:
    """What governance adds to these pages (``governance/page.py``), when it is configured.

    Imports flow governance → rollbacks, so it is found by name, like the engine's hooks.
    """
    return import_module("governance.page") if settings.UNWIND_GOVERNANCE else None


# Process runs -------------------------------------------------------------------------------


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    """Process runs the user can see, newest first, with their latest rollback."""
    rollbacks = Rollback.objects.visible_to(request.user).order_by("-created_at")
    if gov := _governance_page():
        rollbacks = gov.annotate_rollbacks(rollbacks)  # has_break_glass, in the prefetch
    runs = (
        ProcessRun.objects.visible_to(request.user)
        .annotate(action_count=_count(ForwardAction.objects.all(), "run"))
        .prefetch_related(Prefetch("rollbacks", queryset=rollbacks, to_attr="rollback_list"))
        .order_by("-created_at", "-pk")
    )
    page = _page(request, runs)
    for run in page:
        run.latest_rollback = run.rollback_list[0] if run.rollback_list else None
    return render(request, "rollbacks/run_list.html", {"page": page})


def _run_context(request: HttpRequest, run: ProcessRun, form: forms.RollbackPlanForm | None):
    actions = list(run.actions.select_related("system").order_by("sequence"))
    for action in actions:
        action.params_text = _compact(action.params)
        action.before_text = _compact(action.before)
        action.after_text = _compact(action.after)
    under_way = Rollback.objects.filter(run=run).exclude(state__in=Rollback.TERMINAL).first()
    can_plan = access.can_operate_run(request.user, run)
    rollbacks = (
        Rollback.objects.visible_to(request.user)
        .filter(run=run)
        .select_related("requested_by")
        .order_by("-created_at")
    )
    if gov := _governance_page():
        rollbacks = gov.annotate_rollbacks(rollbacks)  # has_break_glass
    return {
        "run": run,
        "actions": actions,
        "rollbacks": rollbacks,
        "under_way": under_way,
        "can_plan": can_plan,
        # A rollback under way hides the form; an error from posting it shows it again.
        "show_plan_form": can_plan and (under_way is None or form is not None),
        "form": form or forms.RollbackPlanForm(),
    }


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One run: its forward actions in order, its rollbacks, and the form to plan one."""
    run = access.get_run_for_user(request.user, pk)
    return render(request, "rollbacks/run_detail.html", _run_context(request, run, None))


@login_required
@require_POST
def run_plan(request: HttpRequest, pk: int) -> HttpResponse:
    """Plan a rollback of the run (``engine.rollback_plan``) and go to it."""
    run = access.get_run_for_user(request.user, pk)
    if not access.can_operate_run(request.user, run):
        access.refuse(
            actor=request.user,
            action="rollback.plan",
            subject=run,
            why="only an operator of the run's teams may plan its rollback",
        )
    form = forms.RollbackPlanForm(request.POST)
    if form.is_valid():
        try:
            rollback = engine.rollback_plan(
                run=run,
                actor=request.user,
                reason=form.cleaned_data["reason"],
                is_drill=form.cleaned_data["is_drill"],
                require_failure=True,
            )
        except engine.EngineError as exc:
            form.add_service_error(exc)
        else:
            messages.success(
                request,
                f"Rollback #{rollback.pk} planned: {rollback.get_state_display()}.",
            )
            return redirect("rollback", pk=rollback.pk)
    return render(
        request, "rollbacks/run_detail.html", _run_context(request, run, form), status=400
    )


# Rollbacks ----------------------------------------------------------------------------------


@login_required
def rollback_list(request: HttpRequest) -> HttpResponse:
    """Rollbacks the user can see: running and paused first, then those not yet started."""
    rollbacks = (
        Rollback.objects.visible_to(request.user)
        .select_related("run", "requested_by")
        .annotate(
            step_count=_count(Step.objects.all(), "rollback"),
            done_count=_count(Step.objects.filter(state__in=Step.DONE), "rollback"),
            rank=Case(
                When(state__in=(R.RUNNING, R.PAUSED), then=Value(0)),
                When(state__in=Rollback.TERMINAL, then=Value(2)),
                default=Value(1),
                output_field=IntegerField(),
            ),
        )
        .order_by("rank", "-created_at", "-pk")
    )
    if gov := _governance_page():
        rollbacks = gov.annotate_rollbacks(rollbacks)  # has_break_glass, in the same query
    return render(request, "rollbacks/rollback_list.html", {"page": _page(request, rollbacks)})


STEP_PAGE = 20  # steps shown in full per page of a rollback's plan; the rest as counts


def _fingerprint(
    rollback: Rollback, stages: list[Stage], can_act: bool, extra: str = "", page: int = 1
) -> str:
    """A digest of everything in the ``rollback-status`` fragment that can change (``extra``:
    the live panels' fingerprints, e.g. governance's approvals, gates, break-glass reviews):
    every step's state and attempts (the counts and the picture), and the shown steps'
    details."""
    state = [rollback.state, rollback.started_at, rollback.finished_at, can_act, extra, page]
    for stage in stages:
        state.append((stage.pk, stage.state))
        state.extend((step.pk, step.state, step.attempts) for step in stage.step_list)
        for step in stage.page_steps:
            state.append(
                (step.pk, step.max_attempts, step.last_error, step.human_note)
                + ([(a.pk, a.outcome, a.finished_at) for a in step.attempt_list],)
            )
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


def _step_page_number(request: HttpRequest) -> int:
    """``?steps=N``; an htmx request (a poll, an action) keeps the page the browser shows."""
    raw = request.GET.get("steps")
    if raw is None and getattr(request, "htmx", None) and request.htmx.current_url:
        raw = parse_qs(urlsplit(request.htmx.current_url).query).get("steps", [None])[0]
    try:
        return max(1, int(raw or 1))
    except ValueError:
        return 1


def _step_pages(number: int, total: int, stages: list[Stage]) -> dict[str, Any]:
    """Which steps this page shows in full, and for each stage the page its first step is on."""
    count = max(1, -(-total // STEP_PAGE))
    number = min(number, count)
    position = 0
    for stage in stages:
        stage.first_page = position // STEP_PAGE + 1
        position += len(stage.step_list)
    return {
        "number": number,
        "count": count,
        "start": (number - 1) * STEP_PAGE,
        "end": min(number * STEP_PAGE, total),
        "previous": number - 1 if number > 1 else None,
        "next": number + 1 if number < count else None,
    }


@dataclass(frozen=True)
class StepSummary:
    """What the page needs of every step (counts, picture, fingerprint, governance's blast
    radius and gates): a row, not a model instance, so a 1,000-step plan loads in a blink."""

    pk: int
    state: str
    attempts: int
    is_manual: bool
    system: System


def _attach_steps(stages: list[Stage], rollback: Rollback) -> None:
    """``stage.step_list``: a StepSummary per step, in id order. Two queries: the rows, and
    their systems with their teams."""
    rows = list(
        Step.objects.filter(rollback=rollback)
        .order_by("id")
        .values_list("pk", "stage_id", "state", "attempts", "is_manual", "system_id")
    )
    systems = System.objects.filter(pk__in={row[5] for row in rows}).select_related("team")
    by_pk = {system.pk: system for system in systems}
    by_stage: dict[int, list[StepSummary]] = {stage.pk: [] for stage in stages}
    for pk, stage_id, state, attempts, is_manual, system_id in rows:
        by_stage[stage_id].append(StepSummary(pk, state, attempts, is_manual, by_pk[system_id]))
    for stage in stages:
        stage.step_list = by_stage[stage.pk]


# What the plan picture's boxes say (170 px wide): a human word for every step state.
BOX_LABELS = {
    S.PENDING: "pending",
    S.RUNNING: "running",
    S.RETRY_WAIT: "retrying soon",
    S.WAITING_HUMAN: "needs a human",
    S.FAILED: "failed",
    S.SUCCEEDED: "done",
    S.SKIPPED: "skipped",
    S.CANCELLED: "cancelled",
}
KEY_PARAMS = 3  # forward-action parameters named in "what was undone"


def _key_params(params: Any) -> str:
    """The first few scalar parameters of a forward action, ``order_id 1001, sku A-1``: the
    ids that tell two lines of the same action apart."""
    if not isinstance(params, dict):
        return ""
    scalars = [(k, v) for k, v in sorted(params.items()) if isinstance(v, str | int | float)]
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in scalars[:KEY_PARAMS])


def _outcome(rollback: Rollback) -> dict[str, Any]:
    """What was undone (or, in a drill, rehearsed) and what was not: one line per step with
    its id and the forward action's key parameters. One query."""
    done, not_done = [], []
    steps = rollback.steps.select_related("system", "forward_action").order_by("stage__index", "id")
    ran_for_real = 0  # in a drill, steps that ran on a rehearsal target
    for step in steps:
        is_rehearsed = rollback.is_drill and not step.system.is_rehearsal and not step.is_manual
        ran_for_real += rollback.is_drill and step.system.is_rehearsal and not step.is_manual
        line = {
            "step": step.pk,
            "what": f"{step.forward_action.action_type} on {step.system.slug}",
            "params": _key_params(step.forward_action.params),
            "how": "by hand" if step.is_manual else ("rehearsed" if is_rehearsed else ""),
            "note": step.human_note,
        }
        if step.state == S.SUCCEEDED:
            done.append(line)
        else:
            line["why"] = step.last_error if step.state != S.SKIPPED else ""
            line["state"] = "skipped" if step.state == S.SKIPPED else step.get_state_display()
            not_done.append(line)
    verb = "rehearsed" if rollback.is_drill and not ran_for_real else "undone"
    return {"done": done, "not_done": not_done, "verb": verb, "total": len(done) + len(not_done)}


def _headline(
    rollback: Rollback, stages: list[Stage], live: list[panels.Panel], can_act: bool
) -> dict:
    """The state in words that are true at this moment: a running rollback whose stage is
    halted on a human says so, an awaiting one says how many approvals it has (the live
    panels say what it waits for: ``Panel.headline``)."""
    state, label, detail = rollback.state, rollback.get_state_display(), ""
    steps = [step for stage in stages for step in stage.step_list]
    halting = next((p.headline for p in live if p.is_halting and p.headline), "")
    if rollback.state in (R.RUNNING, R.PAUSED):
        waiting = [step for step in steps if step.state == S.WAITING_HUMAN]
        failed = [step for step in steps if step.state == S.FAILED]
        who = "you" if can_act else "an operator"
        if waiting or failed:
            state, label = "halted", "halted"
            parts = [f"step {s.pk} waits for {who} (by hand)" for s in waiting]
            parts += [f"step {s.pk} failed and waits for {who}" for s in failed]
            detail = "; ".join(parts)
            if rollback.state == R.PAUSED:
                label = "paused and halted"
        elif halting:
            state, label, detail = "halted", "halted", halting
        elif rollback.state == R.RUNNING:
            current = next((st for st in stages if st.state != Stage.State.SUCCEEDED), None)
            if current is not None:
                detail = f"stage {current.index} of {len(stages)}"
        else:
            detail = "steps in flight finish, nothing new starts"
    elif rollback.state == R.AWAITING_APPROVAL:
        detail = next((p.headline for p in live if p.headline), "")
    elif rollback.state == R.APPROVED:
        detail = "ready to start"
    return {"state": state, "label": label, "detail": detail}


def _elapsed(rollback: Rollback) -> str:
    """How long it has run (or ran); whole minutes below an hour, so a poll changes it
    once a minute, not every second."""
    if not rollback.started_at:
        return ""
    end = rollback.finished_at or timezone.now()
    minutes = int((end - rollback.started_at).total_seconds() // 60)
    if minutes < 1:
        return "under a minute"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _needs_human(rollback: Rollback, stages: list[Stage]) -> list[Step]:
    """The steps a human must act on now (waiting for a hand, failed), in full, for the
    first screen's controls: one query, none when nothing waits."""
    ids = [s.pk for st in stages for s in st.step_list if s.state in Step.NEEDS_HUMAN]
    if not ids:
        return []
    steps = list(
        Step.objects.filter(pk__in=ids)
        .select_related("system", "forward_action", "stage")
        .order_by("stage__index", "id")
    )
    for step in steps:
        step.spec_rows = _spec_rows(step.spec)
    return steps


def _panel_page(request: HttpRequest, rollback: Rollback, context: dict) -> panels.PanelPage:
    systems = sorted({s.system.slug for st in context["stages"] for s in st.step_list})
    return panels.PanelPage(can_act=context["can_act"], is_live=context["is_live"], systems=systems)


def _rendered_panels(request: HttpRequest, rollback: Rollback, page: panels.PanelPage):
    regions = panels.build(request, rollback, page)
    for region in regions.values():
        for panel in region:
            panel.html = _render_panel(request, rollback, panel)
    return regions


def _render_panel(
    request: HttpRequest, rollback: Rollback, panel: panels.Panel, **extra: Any
) -> str:
    context = {**panel.context, "rollback": rollback, "panel": panel, **extra}
    return render_to_string(panel.template, context, request)


def _live_panels(
    request: HttpRequest,
    rollback: Rollback,
    stages: list[Stage],
    can_act: bool,
    is_live: bool,
    panel_forms: dict[str, Any] | None,
) -> dict[str, list[panels.Panel]]:
    """The live panels of the status fragment, by region. Their HTML is rendered only when
    the template asks (``panel.html`` is a callable): a poll answered 204 renders none. A
    stage panel is rendered in each stage (``stage.panel_html``, ``stage.tags``)."""
    systems = sorted({s.system.slug for st in stages for s in st.step_list})
    page = panels.PanelPage(
        can_act=can_act,
        is_live=is_live,
        systems=systems,
        stages=stages,
        forms=panel_forms or {},
    )
    regions = panels.build(request, rollback, page, live=True)
    for region, found in regions.items():
        for panel in found:
            if region != "stage":
                panel.html = lambda p=panel: _render_panel(request, rollback, p)
    for stage in stages:
        stage.panel_html = [
            lambda p=panel, st=stage: _render_panel(request, rollback, p, stage=st)
            for panel in regions["stage"]
        ]
        stage.tags = [tag for p in regions["stage"] for tag in p.stage_tags.get(stage.index, ())]
    return regions


def _rollback_context(
    request: HttpRequest,
    rollback: Rollback,
    panel_forms: dict[str, Any] | None = None,
    *,
    is_visible: bool = False,
) -> dict[str, Any]:
    """Everything the rollback page's status shows, in a fixed number of queries however
    many steps.

    Every step is summarised (the counts, the picture, the live panels such as governance's);
    only the steps of one page (``STEP_PAGE``) are loaded and shown in full, with their
    attempts, so that a 1,000-step rollback renders about as fast as a 50-step one.
    ``panel_forms``: bound forms of live panels whose errors the page shows (a 400 answer).
    ``is_visible``: the caller has just fetched the rollback through ``visible_to`` for this
    user, so whether they may act on it is their role alone (four queries fewer per poll).
    """
    rollback = Rollback.objects.select_related(
        "run", "requested_by", "dependency_map", *panels.related()
    ).get(pk=rollback.pk)
    stages = list(Stage.objects.filter(rollback=rollback).order_by("index"))
    _attach_steps(stages, rollback)
    step_count = sum(len(stage.step_list) for stage in stages)
    pages = _step_pages(_step_page_number(request), step_count, stages)
    in_order = [step.pk for stage in stages for step in stage.step_list]
    shown_ids = in_order[pages["start"] : pages["start"] + STEP_PAGE]
    shown = {
        step.pk: step
        for step in Step.objects.filter(pk__in=shown_ids)
        .select_related("system__team", "forward_action")
        .prefetch_related(
            Prefetch(
                "attempt_set", queryset=Attempt.objects.order_by("number"), to_attr="attempt_list"
            )
        )
    }
    for stage in stages:
        stage.page_steps = [shown[step.pk] for step in stage.step_list if step.pk in shown]
        stage.state_counts = [
            (state, n, S(state).label)
            for state, n in sorted(Counter(step.state for step in stage.step_list).items())
        ]
        for step in stage.page_steps:
            step.spec_rows = _spec_rows(step.spec)
            step.output_text = _compact(step.output)
            for attempt in step.attempt_list:
                attempt.output_text = _compact(attempt.output)
    if is_visible:
        can_act = access.has_role(request.user, *access.OPERATOR_ROLES)
    else:
        can_act = access.can_operate(request.user, rollback)
    picture, plan_nodes = diagram.plan_picture(
        [[(step.system.slug, step.state) for step in stage.step_list] for stage in stages],
        services.map_edges(rollback.dependency_map),
    )
    plan_boxes = [(node, BOX_LABELS.get(node.state, node.state)) for node in plan_nodes]
    for stage in stages:
        stage.done_count = sum(1 for step in stage.step_list if step.state in Step.DONE)
    # An abort lets steps in flight finish: keep watching until they have.
    is_live = not rollback.is_terminal or any(
        step.state == S.RUNNING for stage in stages for step in stage.step_list
    )
    live = _live_panels(request, rollback, stages, can_act, is_live, panel_forms)
    live_list = [panel for region in live.values() for panel in region]
    elapsed = _elapsed(rollback)
    extra = "".join(panel.fingerprint for panel in live_list) + elapsed
    fingerprint = _fingerprint(rollback, stages, can_act, extra, pages["number"])
    steps = [step for stage in stages for step in stage.step_list]
    return {
        "rollback": rollback,
        "stages": stages,
        "picture": picture,
        "plan_nodes": plan_nodes,
        "plan_boxes": plan_boxes,
        "live": live,
        "title_tags": [tag for panel in live_list for tag in panel.tags],
        "needs_you": any(panel.needs_you for panel in live_list),
        "headline": _headline(rollback, stages, live_list, can_act),
        "elapsed": elapsed,
        "done_count": sum(1 for step in steps if step.state in Step.DONE),
        "touching": sorted(
            {step.system.slug for step in steps if step.state in (S.RUNNING, S.RETRY_WAIT)}
        ),
        "needs_human": _needs_human(rollback, stages) if not rollback.is_terminal else [],
        "fingerprint": fingerprint,
        "is_live": is_live,
        "step_count": step_count,
        "step_pages": pages,
        "can_act": can_act,
        "outcome": _outcome(rollback) if rollback.is_terminal else None,
        # Failed and waiting steps have their skip form on the first screen, the others here.
        "skippable": (S.PENDING, S.RETRY_WAIT),
    }


def rollback_page(
    request: HttpRequest,
    rollback: Rollback,
    *,
    status: int = 200,
    panel_forms: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> HttpResponse:
    """The whole rollback page with every panel; ``panel_forms``: a live panel's bound
    forms showing their errors (``status`` 400)."""
    context = context or _rollback_context(request, rollback, panel_forms)
    page = _panel_page(request, rollback, context)
    context["panels"] = _rendered_panels(request, context["rollback"], page)
    return render(request, DETAIL, context, status=status)


@login_required
def rollback_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The rollback page; htmx polls get only its ``rollback-status`` fragment."""
    rollback = access.get_rollback_for_user(request.user, pk)
    context = _rollback_context(request, rollback, is_visible=True)
    if request.htmx and request.GET.get("v") == context["fingerprint"]:
        # Nothing changed since the last poll: 204 swaps nothing, so the operator's focus,
        # open <details> and screen-reader position survive, and polling goes on.
        response = HttpResponse(status=204)
    elif request.htmx:
        response = render(request, DETAIL + "#rollback-status", context)
    else:
        response = rollback_page(request, rollback, context=context)
    patch_vary_headers(response, ("HX-Request",))  # the page and its fragment share a URL
    return response


@login_required
def rollback_panel(request: HttpRequest, pk: int, key: str) -> HttpResponse:
    """One panel of the rollback page (``settings.UNWIND_ROLLBACK_PANELS``), polled while
    what it shows can still change: when the rollback ends, every panel catches up."""
    rollback = access.get_rollback_for_user(request.user, pk)
    is_live = not rollback.is_terminal or rollback.steps.filter(state=S.RUNNING).exists()
    slugs = Step.objects.filter(rollback=rollback).values_list("system__slug", flat=True)
    page = panels.PanelPage(
        can_act=access.has_role(request.user, *access.OPERATOR_ROLES),
        is_live=is_live,
        systems=sorted(set(slugs)),
    )
    panel = panels.find(request, rollback, page, key)
    if panel is None:
        return HttpResponse(status=404)
    return HttpResponse(_render_panel(request, rollback, panel))


def _answer(request: HttpRequest, rollback: Rollback, ok: bool, text: str) -> HttpResponse:
    """After an action: back to the page with a message, or (htmx) the fresh fragment plus
    an out-of-band ``action-result`` notice, which polling does not overwrite."""
    if not request.htmx:
        (messages.success if ok else messages.error)(request, text)
        return redirect("rollback", pk=rollback.pk)
    context = _rollback_context(request, rollback)
    status = render_to_string(DETAIL + "#rollback-status", context, request)
    notice = render_to_string(
        DETAIL + "#action-result", {"notice": text, "is_ok": ok, "is_oob": True}, request
    )
    return HttpResponse(status + notice)


ROLLBACK_ACTIONS: dict[str, tuple[type[Form], Callable[..., Any], str]] = {
    "start": (forms.NoInputForm, engine.rollback_start, "Rollback #{pk} started."),
    "pause": (
        forms.NoInputForm,
        engine.rollback_pause,
        "Rollback #{pk} paused: steps in flight finish, nothing new starts.",
    ),
    "resume": (forms.NoInputForm, engine.rollback_resume, "Rollback #{pk} resumed."),
    "abort": (forms.AbortForm, engine.rollback_abort, "Rollback #{pk} aborted."),
}

STEP_ACTIONS: dict[str, tuple[type[Form], Callable[..., Any], str]] = {
    "retry": (forms.NoInputForm, engine.step_retry, "Step {pk} will be tried again."),
    "skip": (forms.SkipForm, engine.step_skip, "Step {pk} skipped: its effect stays undone."),
    "resolve": (forms.ResolveForm, engine.step_resolve, "Step {pk} marked as done by hand."),
}


# The names the engine records for these actions, so that a refusal reads the same.
STEP_LEDGER_ACTIONS = {"retry": "step.retried", "skip": "step.skipped", "resolve": "step.resolved"}


def _service_kwargs(form: Form) -> dict[str, Any]:
    return {k: v for k, v in form.cleaned_data.items() if k != "confirm"}


@login_required
@require_POST
def rollback_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Start, pause, resume or abort a rollback through its engine service."""
    rollback = access.get_rollback_for_user(request.user, pk)
    form_class, service, done = ROLLBACK_ACTIONS[action]
    # Refused (403, ledgered) before reading the form, so an auditor learns nothing more.
    access.require_operator(request.user, rollback, f"rollback.{action}")
    form = form_class(request.POST)
    if not form.is_valid():
        return _answer(request, rollback, False, forms.errors_text(form))
    try:
        rollback = service(rollback=rollback, actor=request.user, **_service_kwargs(form))
    except engine.EngineError as exc:
        return _answer(request, rollback, False, _service_error(exc))
    text = done.format(pk=rollback.pk)
    if action == "abort" and rollback.state == R.FAILED:
        text = f"Rollback #{rollback.pk} aborted: it ends failed, because a step had failed."
    return _answer(request, rollback, True, text)


@login_required
@require_POST
def step_action(request: HttpRequest, pk: int, step_id: int, action: str) -> HttpResponse:
    """Retry, skip or resolve one step through its engine service."""
    rollback = access.get_rollback_for_user(request.user, pk)
    step = get_object_or_404(
        Step.objects.select_related("rollback", "system", "forward_action", "contract"),
        pk=step_id,
        rollback=rollback,
    )
    form_class, service, done = STEP_ACTIONS[action]
    access.require_operator(request.user, rollback, STEP_LEDGER_ACTIONS[action])
    form = form_class(request.POST)
    if not form.is_valid():
        return _answer(request, rollback, False, forms.errors_text(form))
    try:
        service(step=step, actor=request.user, **_service_kwargs(form))
    except engine.EngineError as exc:
        return _answer(request, rollback, False, _service_error(exc))
    return _answer(request, rollback, True, done.format(pk=step.pk))
