"""Every URL and API endpoint, as each role and as an outsider, on own and foreign objects.

The table below says what each of them must answer. A URL pattern that is missing from the
table fails ``test_every_url_is_in_the_table``: a new view cannot ship without saying who
may reach it.

The cast: alice (operator, payments), bob (approver, payments), carol (auditor), dave
(admin, superuser), mallory (no role, no team), and the anonymous visitor. "Own" objects
touch payments systems; "foreign" ones touch only platform systems, which alice and bob
cannot see.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.urls import URLPattern, URLResolver, get_resolver

from governance.models import ApprovalPolicy
from ledger.models import Entry
from rollbacks import engine, runs, services
from rollbacks.models import System
from rollbacks.tokens import token_create
from runbooks import services as runbooks

pytestmark = pytest.mark.django_db
ROLES = ("anon", "alice", "bob", "carol", "dave", "mallory")
LOGIN = "login"  # a redirect to the login page


def _routes() -> set[str]:
    def walk(patterns, prefix=""):
        for p in patterns:
            if isinstance(p, URLResolver):
                if str(p.pattern).startswith("admin/"):
                    continue  # Django admin: staff only, its own tests
                yield from walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                yield prefix + str(p.pattern)

    return set(walk(get_resolver().url_patterns))


# Who sees an object of the payments team ("own") or of the platform team ("foreign").
SEES_OWN = {"anon": LOGIN, "alice": 200, "bob": 200, "carol": 200, "dave": 200, "mallory": 404}
SEES_FOREIGN = {"anon": LOGIN, "alice": 404, "bob": 404, "carol": 200, "dave": 200, "mallory": 404}
EVERY_USER = {"anon": LOGIN, "alice": 200, "bob": 200, "carol": 200, "dave": 200, "mallory": 200}
AUDITORS = {"anon": LOGIN, "alice": 404, "bob": 404, "carol": 200, "dave": 200, "mallory": 404}
# POSTs that change something: operators act on their teams' rollbacks; approvers decide.
OPERATE_OWN = {"anon": LOGIN, "alice": "ok", "bob": 403, "carol": 403, "dave": "ok", "mallory": 404}
OPERATE_FOREIGN = {
    "anon": LOGIN,
    "alice": 404,
    "bob": 404,
    "carol": 403,
    "dave": "ok",
    "mallory": 404,
}
APPROVE_OWN = {"anon": LOGIN, "alice": 403, "bob": "ok", "carol": 403, "dave": "ok", "mallory": 404}
APPROVE_FOREIGN = {
    "anon": LOGIN,
    "alice": 404,
    "bob": 404,
    "carol": 403,
    "dave": "ok",
    "mallory": 404,
}


@pytest.fixture
def world(make_system, alice, bob, carol, dave, mallory, django_user_model):
    own_sys = make_system("orders-api")
    make_system("flags", team="platform", kind="feature_flag", tier=3)
    for system in System.objects.all():
        services.contract_publish(
            system=system, actions={"act": {"compensation": {"kind": "simulated"}}}, actor="test"
        )
    ApprovalPolicy.objects.create(name="everything", approvals_required=1)
    objects = {}
    runbooks.incident_types_ensure(actor="test")  # a transactional test may have flushed them
    incident = runbooks.IncidentType.objects.get(slug="bad-deploy")
    pat = django_user_model.objects.create_user(
        "pat"
    )  # a platform operator: requests the foreign rollback
    pat.groups.set(
        [Group.objects.get(name="team:platform"), Group.objects.get_or_create(name="operator")[0]]
    )
    for side, system, requester in (("own", "orders-api", alice), ("foreign", "flags", pat)):
        run, _ = runs.run_register(process="p", external_id=side, actor="test")
        runs.action_report(
            run=run, system_slug=system, action_type="act", idempotency_key="k", actor="test"
        )
        runs.run_fail(run=run, reason="boom", actor="test")
        rollback = engine.rollback_plan(run=run, actor=requester, reason="r")
        runbook = runbooks.runbook_create(
            slug=f"{side}-runbook",
            name=f"{side} runbook",
            incident_type=incident,
            actor="test",
        )
        runbooks.runbook_version_publish(
            runbook=runbook,
            parameters=[],
            steps=[{"system": system, "action_type": "act", "params": {}}],
            actor="test",
        )
        objects[side] = {
            "runbook": runbook.slug,
            "run": run,
            "rollback": rollback,
            "step": rollback.steps.get(),
            "approval": None,
            "entry": Entry.objects.filter(rollback_id=rollback.pk).first(),
        }
    users = {"alice": alice, "bob": bob, "carol": carol, "dave": dave, "mallory": mallory}
    tokens = {name: token_create(user=user, name=name)[1] for name, user in users.items()}
    return {"objects": objects, "users": users, "tokens": tokens, "system": own_sys}


def _answer(response) -> object:
    if response.status_code in (301, 302) and "/login/" in response.get("Location", ""):
        return LOGIN
    return response.status_code


def _check(client, world, method, url_for, expected, *, data=None, label=""):
    problems = []
    for side in ("own", "foreign"):
        want = expected[side] if isinstance(expected, dict) and side in expected else expected
        if want is None:
            continue
        url = url_for(world["objects"][side])
        for role in ROLES:
            client.logout()
            if role != "anon":
                client.force_login(world["users"][role])
            response = client.get(url) if method == "get" else client.post(url, data or {})
            got = _answer(response)
            wanted = want[role]
            ok = got in (200, 204, 302, 400) if wanted == "ok" else got == wanted
            if not ok:
                problems.append(f"{label or url} [{side}] as {role}: {got}, expected {wanted}")
    return problems


PAGES = [
    # (route, method, url builder, expectations for own/foreign objects)
    ("systems/", "get", lambda o: "/systems/", EVERY_USER),
    ("runs/", "get", lambda o: "/runs/", EVERY_USER),
    ("rollbacks/", "get", lambda o: "/rollbacks/", EVERY_USER),
    ("approvals/", "get", lambda o: "/approvals/", EVERY_USER),
    (
        "runs/<int:pk>/",
        "get",
        lambda o: f"/runs/{o['run'].pk}/",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/",
        "get",
        lambda o: f"/rollbacks/{o['rollback'].pk}/",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    (
        "runs/<int:pk>/plan",
        "post",
        lambda o: f"/runs/{o['run'].pk}/plan",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/<rollback_action:action>",
        "post",
        lambda o: f"/rollbacks/{o['rollback'].pk}/start",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/steps/<int:step_id>/<step_action:action>",
        "post",
        lambda o: f"/rollbacks/{o['rollback'].pk}/steps/{o['step'].pk}/retry",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/approve",
        "post",
        lambda o: f"/rollbacks/{o['rollback'].pk}/approve",
        {"own": APPROVE_OWN, "foreign": APPROVE_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/reject",
        "post",
        lambda o: f"/rollbacks/{o['rollback'].pk}/reject",
        {"own": APPROVE_OWN, "foreign": APPROVE_FOREIGN},
    ),
    (
        "reconcile/rollbacks/<int:pk>/",
        "get",
        lambda o: f"/reconcile/rollbacks/{o['rollback'].pk}/",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    (
        "reconcile/rollbacks/<int:pk>/run",
        "post",
        lambda o: f"/reconcile/rollbacks/{o['rollback'].pk}/run",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    (
        "reconcile/rollbacks/<int:pk>/follow-up",
        "post",
        lambda o: f"/reconcile/rollbacks/{o['rollback'].pk}/follow-up",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/timeline",
        "get",
        lambda o: f"/rollbacks/{o['rollback'].pk}/timeline?after=0.alert.0",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    ("ledger/", "get", lambda o: "/ledger/", AUDITORS),
    ("ledger/<int:pk>/", "get", lambda o: f"/ledger/{o['entry'].pk}/", AUDITORS),
    # The dashboard (docs/dashboard.md): everyone has an overview and metrics of what they see.
    ("", "get", lambda o: "/", EVERY_USER),
    ("metrics/", "get", lambda o: "/metrics/", EVERY_USER),
    (
        "systems/<slug:slug>/",
        "get",
        lambda o: f"/systems/{o['rollback'].steps.get().system.slug}/",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    ("runbooks/", "get", lambda o: "/runbooks/", EVERY_USER),
    (
        "runbooks/<slug:slug>/",
        "get",
        lambda o: f"/runbooks/{o['runbook']}/",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    (
        "runbooks/<slug:slug>/instantiate",
        "post",
        lambda o: f"/runbooks/{o['runbook']}/instantiate",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    # One panel of the rollback page (settings.UNWIND_ROLLBACK_PANELS), polled until it settles.
    (
        "rollbacks/<int:pk>/panels/<slug:key>",
        "get",
        lambda o: f"/rollbacks/{o['rollback'].pk}/panels/health-around",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    # Reports: whoever sees the rollback reads and downloads them (downloads are ledgered).
    (
        "rollbacks/<int:pk>/report",
        "get",
        lambda o: f"/rollbacks/{o['rollback'].pk}/report",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/report.md",
        "get",
        lambda o: f"/rollbacks/{o['rollback'].pk}/report.md",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/report.html",
        "get",
        lambda o: f"/rollbacks/{o['rollback'].pk}/report.html",
        {"own": SEES_OWN, "foreign": SEES_FOREIGN},
    ),
    # Drill faults: operators of the rollback's teams (these rollbacks are no drills, so
    # the service refuses with a message: "ok"); a fault that does not exist is a 404.
    (
        "rollbacks/<int:pk>/faults",
        "post",
        lambda o: f"/rollbacks/{o['rollback'].pk}/faults",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
    ),
    (
        "rollbacks/<int:pk>/faults/<int:fault_id>/remove",
        "post",
        lambda o: f"/rollbacks/{o['rollback'].pk}/faults/999999/remove",
        {
            "own": OPERATE_OWN | {"alice": 404, "dave": 404},
            "foreign": OPERATE_FOREIGN | {"dave": 404},
        },
    ),
]


def test_every_url_is_in_the_table():
    covered = {route for route, *_ in PAGES} | set(OTHER_ROUTES) | set(API_ROUTES)
    missing = sorted(_routes() - covered)
    assert not missing, f"views with no access expectations in tests/test_access_walk.py: {missing}"


@pytest.mark.parametrize(
    ("route", "method", "url_for", "expected"), PAGES, ids=[p[0] + " " + p[1] for p in PAGES]
)
def test_pages_answer_each_role_as_expected(client, world, route, method, url_for, expected):
    problems = _check(client, world, method, url_for, expected, label=route)
    assert not problems, "\n".join(problems)


# Routes with a behaviour of their own, each checked by a test below.
OTHER_ROUTES = {
    "login/": "test_login_and_logout",
    "logout/": "test_login_and_logout",
    "approvals/count": "test_approvals_badge",
    "rollbacks/<int:pk>/approvals/<int:approval_id>/revoke": "test_governance_posts",
    "rollbacks/<int:pk>/break-glass": "test_governance_posts",
    "rollbacks/<int:pk>/break-glass/review": "test_governance_posts",
    "rollbacks/<int:pk>/stages/<int:index>/open-gate": "test_governance_posts",
    "ledger/verify": "test_ledger_routes",
    "ledger/exports": "test_ledger_routes",
    "ledger/exports/<uuid:pk>/": "test_ledger_routes",
    "ledger/exports/<uuid:pk>/file": "test_ledger_routes",
    "ledger/exports/<uuid:pk>/manifest.json": "test_ledger_routes",
    # An endless stream: tests/timeline/test_stream.py reads its first events per role.
    "rollbacks/<int:pk>/timeline/stream": "test_the_stream_answers_each_role_as_expected",
    "reconcile/rollbacks/<int:pk>/findings/<int:finding_id>/dismiss": "test_reconcile_dismiss",
    # Prometheus's: a token or an allowed address, whoever is logged in (tests/metrics/).
    "metrics": "test_metrics_and_single_sign_on_routes",
    # Single sign-on's (tests/governance/test_sso.py, tests/browser/test_sso.py).
    "oidc/authenticate/": "test_metrics_and_single_sign_on_routes",
    "oidc/callback/": "test_metrics_and_single_sign_on_routes",
    "oidc/logout/": "test_metrics_and_single_sign_on_routes",
}


def test_login_and_logout(client, world):
    assert client.get("/login/").status_code == 200
    client.force_login(world["users"]["alice"])
    assert client.get("/login/").status_code == 302  # already logged in
    assert client.get("/logout/").status_code == 405  # logging out is a POST
    assert client.post("/logout/").status_code == 302
    assert _answer(client.get("/systems/")) == LOGIN


def test_metrics_and_single_sign_on_routes(client, world):
    far = {"REMOTE_ADDR": "203.0.113.5"}
    for role in ROLES:
        if role != "anon":
            client.force_login(world["users"][role])
        assert client.get("/metrics", **far).status_code == 403  # a session is no scraper
        # Without SSO configured, its routes are not there.
        assert client.get("/oidc/authenticate/").status_code == 404
        assert client.get("/oidc/callback/?code=c&state=s").status_code == 404
        client.logout()
    client.force_login(world["users"]["alice"])
    assert client.post("/oidc/logout/").status_code == 302  # logs out, like /logout/
    assert _answer(client.get("/systems/")) == LOGIN


def test_approvals_badge(client, world):
    assert client.get("/approvals/count").status_code == 204  # anonymous: nothing to swap
    for role in ("alice", "bob", "carol", "dave", "mallory"):
        client.force_login(world["users"][role])
        assert client.get("/approvals/count").status_code == 200


def test_governance_posts(client, world):
    """Break-glass, its review, gates and revocation, in this order (dave's break-glass is
    what the reviews then review): nobody without the right gets through."""
    acted = (302, 400)  # done, or refused by the service with a message (changes nothing)
    tables = [
        (
            "break-glass",
            {
                "own": {"alice": 403, "bob": 403, "carol": 403, "dave": 302, "mallory": 404},
                "foreign": {"alice": 404, "bob": 404, "carol": 403, "dave": 302, "mallory": 404},
            },
        ),
        # dave broke the glass: he may not review it; alice is no reviewer; bob and carol are.
        (
            "break-glass/review",
            {
                "own": {"alice": 403, "bob": 302, "carol": 302, "dave": 403, "mallory": 404},
                "foreign": {"alice": 404, "bob": 404, "carol": 302, "dave": 403, "mallory": 404},
            },
        ),
        # alice requested the own rollback (four-eyes); no gate is waiting, so those who may
        # open one get the service's refusal as a message.
        (
            "stages/1/open-gate",
            {
                "own": {"alice": 403, "bob": acted, "carol": 403, "dave": acted, "mallory": 404},
                "foreign": {"alice": 404, "bob": 404, "carol": 403, "dave": acted, "mallory": 404},
            },
        ),
        (
            "approvals/999999/revoke",
            {
                "own": {"alice": 404, "bob": 404, "carol": 404, "dave": 404, "mallory": 404},
                "foreign": {"alice": 404, "bob": 404, "carol": 404, "dave": 404, "mallory": 404},
            },
        ),
    ]
    problems = []
    for suffix, table in tables:
        for side in ("own", "foreign"):
            url = f"/rollbacks/{world['objects'][side]['rollback'].pk}/{suffix}"
            for role in ROLES:
                client.logout()
                if role != "anon":
                    client.force_login(world["users"][role])
                got = _answer(
                    client.post(url, {"reason": "x" * 20, "comment": "checked", "confirm": "on"})
                )
                want = LOGIN if role == "anon" else table[side][role]
                if not (got in want if isinstance(want, tuple) else got == want):
                    problems.append(f"POST {url} [{side}] as {role}: {got}, expected {want}")
    assert not problems, "\n".join(problems)


def test_ledger_routes(client, world):
    problems = []
    for role in ROLES:
        client.logout()
        if role != "anon":
            client.force_login(world["users"][role])
        wanted = AUDITORS[role]
        got = _answer(client.post("/ledger/verify"))
        if (wanted == 200 and got not in (200, 302)) or (wanted != 200 and got != wanted):
            problems.append(f"POST /ledger/verify as {role}: {got}")
        got = _answer(client.post("/ledger/exports", {"format": "jsonl"}))
        if (wanted == 200 and got not in (200, 302)) or (wanted != 200 and got != wanted):
            problems.append(f"POST /ledger/exports as {role}: {got}")
        for suffix in ("", "file", "manifest.json"):
            url = f"/ledger/exports/00000000-0000-0000-0000-000000000000/{suffix}"
            got = _answer(client.get(url))
            # The manifest also serves API clients: without a session it asks for a token.
            if got not in ((LOGIN, 401) if role == "anon" else (404,)):
                problems.append(f"GET {url} as {role}: {got}")
    assert not problems, "\n".join(problems)


# The JSON API, with each role's token. "own"/"foreign" as for the pages.
API_ROUTES = {
    "api/v1/openapi.json",
    "api/v1/",
    "api/v1/runs",
    "api/v1/runs/<id>/actions",
    "api/v1/runs/<id>/failure",
    "api/v1/rollbacks",
    "api/v1/rollbacks/<id>",
    "api/v1/rollbacks/<id>/<action>",
    "api/v1/rollbacks/<id>/steps/<step_id>/<action>",
    "api/v1/steps/<step_id>/<action>",
    "api/v1/estate",
    "api/v1/alerts/alertmanager",
    "api/v1/events",
    "api/v1/ledger/export",
    "api/v1/runbooks/<slug>/instantiate",
}
API_NONE = {"anon": 401}


def _api(client, world, role, method, url, body=None):
    headers = {} if role == "anon" else {"Authorization": f"Bearer {world['tokens'][role]}"}
    if method == "get":
        return client.get(url, headers=headers).status_code
    return client.generic(
        method.upper(),
        url,
        json.dumps(body or {}),
        content_type="application/json",
        headers=headers,
    ).status_code


def test_api_answers_each_role_as_expected(client, world, settings):
    from ledger import signing

    settings.LEDGER_SIGNING_KEY = signing.generate_key_b64()
    own, foreign = world["objects"]["own"], world["objects"]["foreign"]
    cases = [
        # (method, url, body, {role: expected status})
        (
            "get",
            f"/api/v1/rollbacks/{own['rollback'].pk}",
            None,
            {"anon": 401, "alice": 200, "bob": 200, "carol": 200, "dave": 200, "mallory": 404},
        ),
        (
            "get",
            f"/api/v1/rollbacks/{foreign['rollback'].pk}",
            None,
            {"anon": 401, "alice": 404, "bob": 404, "carol": 200, "dave": 200, "mallory": 404},
        ),
        (
            "post",
            "/api/v1/runs",
            lambda role: {"process": "p", "external_id": f"new-{role}"},
            {"anon": 401, "alice": 201, "bob": 403, "carol": 403, "dave": 201, "mallory": 403},
        ),
        (
            "post",
            f"/api/v1/runs/{own['run'].pk}/failure",
            {"reason": "x"},
            {"anon": 401, "alice": 200, "bob": 403, "carol": 403, "dave": 200, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/runs/{foreign['run'].pk}/failure",
            {"reason": "x"},
            {"anon": 401, "alice": 404, "bob": 404, "carol": 403, "dave": 200, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/runs/{own['run'].pk}/actions",
            lambda role: {
                "system": "orders-api",
                "action_type": "act",
                "idempotency_key": f"k-{role}",
            },
            {"anon": 401, "alice": 201, "bob": 403, "carol": 403, "dave": 201, "mallory": 404},
        ),
        (
            "post",
            "/api/v1/rollbacks",
            {"run": foreign["run"].pk, "reason": "r"},
            {"anon": 401, "alice": 404, "bob": 404, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/rollbacks/{own['rollback'].pk}/pause",
            {},
            {"anon": 401, "alice": 400, "bob": 403, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/rollbacks/{foreign['rollback'].pk}/pause",
            {},
            {"anon": 401, "alice": 404, "bob": 404, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/rollbacks/{own['rollback'].pk}/steps/{own['step'].pk}/retry",
            {},
            {"anon": 401, "alice": 400, "bob": 403, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/rollbacks/{own['rollback'].pk}/approve",
            {"comment": ""},
            {"anon": 401, "alice": 403, "bob": 400, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/steps/{own['step'].pk}/retry",
            {},
            {"anon": 401, "alice": 400, "bob": 403, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "post",
            f"/api/v1/steps/{foreign['step'].pk}/retry",
            {},
            {"anon": 401, "alice": 404, "bob": 404, "carol": 403, "dave": 400, "mallory": 404},
        ),
        (
            "get",
            "/api/v1/runs",
            None,
            # Everyone with a token may list; each sees only what it may (tests/rollbacks).
            {"anon": 401, "alice": 200, "bob": 200, "carol": 200, "dave": 200, "mallory": 200},
        ),
        (
            "get",
            "/api/v1/estate",
            None,
            {"anon": 401, "alice": 403, "bob": 403, "carol": 403, "dave": 200, "mallory": 403},
        ),
        (
            "put",
            "/api/v1/estate?dry_run=1",
            {"version": 1},
            {"anon": 401, "alice": 403, "bob": 403, "carol": 403, "dave": 200, "mallory": 403},
        ),
        (
            "get",
            "/api/v1/ledger/export?format=jsonl",
            None,
            {"anon": 401, "alice": 403, "bob": 403, "carol": 200, "dave": 200, "mallory": 403},
        ),
        (
            "post",
            "/api/v1/alerts/alertmanager",
            {"version": "4"},
            # Alerts come from service accounts with the operator (or admin) role.
            {"anon": 401, "alice": 400, "bob": 403, "carol": 403, "dave": 400, "mallory": 403},
        ),
        (
            "post",
            "/api/v1/runbooks/own-runbook/instantiate",
            {"params": {}, "reason": "r"},
            {"anon": 401, "alice": 201, "bob": 403, "carol": 403, "dave": 201, "mallory": 404},
        ),
        (
            "post",
            "/api/v1/runbooks/foreign-runbook/instantiate",
            {"params": {}, "reason": "r"},
            {"anon": 401, "alice": 404, "bob": 404, "carol": 403, "dave": 201, "mallory": 404},
        ),
        (
            "post",
            "/api/v1/events",
            {"kind": "deploy", "source": "ci", "title": "t", "rollback": own["rollback"].pk},
            # Events come from operator or admin accounts; the rollback must be visible.
            {"anon": 401, "alice": 201, "bob": 403, "carol": 403, "dave": 201, "mallory": 403},
        ),
        (
            "post",
            "/api/v1/events",
            {"kind": "deploy", "source": "ci", "title": "t", "rollback": foreign["rollback"].pk},
            {"anon": 401, "alice": 400, "bob": 403, "carol": 403, "dave": 201, "mallory": 403},
        ),
    ]
    problems = []
    for method, url, body, expected in cases:
        for role in ROLES:
            got = _api(client, world, role, method, url, body(role) if callable(body) else body)
            if got != expected[role]:
                problems.append(
                    f"{method.upper()} {url} as {role}: {got}, expected {expected[role]}"
                )
    assert client.get("/api/v1/openapi.json").status_code == 200  # the schema is public
    assert not problems, "\n".join(problems)


def test_reconcile_dismiss(client, world):
    """Dismissing a finding: operators of its system's team (and admins); nobody else."""
    from reconcile.models import CheckResult, Finding, Reconciliation

    for side in ("own", "foreign"):
        rollback = world["objects"][side]["rollback"]
        rec = Reconciliation.objects.create(rollback=rollback, state="done")
        system = rollback.steps.get().system
        result = CheckResult.objects.create(
            reconciliation=rec, system=system, check_name="c", outcome="findings"
        )
        world["objects"][side]["finding"] = Finding.objects.create(
            reconciliation=rec,
            rollback=rollback,
            result=result,
            system=system,
            check_name="c",
            category="other",
            description="d",
            fingerprint="f",
        )
    problems = _check(
        client,
        world,
        "post",
        lambda o: f"/reconcile/rollbacks/{o['rollback'].pk}/findings/{o['finding'].pk}/dismiss",
        {"own": OPERATE_OWN, "foreign": OPERATE_FOREIGN},
        data={"reason": ""},  # an empty reason: refused with a message, nothing changes
        label="dismiss",
    )
    assert not problems, "\n".join(problems)
    assert set(Finding.objects.values_list("status", flat=True)) == {"open"}
    client.force_login(world["users"]["carol"])  # a finding of another rollback is not found
    own, foreign = world["objects"]["own"], world["objects"]["foreign"]
    url = f"/reconcile/rollbacks/{own['rollback'].pk}/findings/{foreign['finding'].pk}/dismiss"
    assert client.post(url, {"reason": "x"}).status_code == 404
