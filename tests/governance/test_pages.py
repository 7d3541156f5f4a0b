"""Governance on the rollback page and "My pending approvals", per member of the cast:
the policy decision, the approval panel, four-eyes, attestations, break-glass and its
reviews, stage gates. State is made through the services; no worker runs (stage gates drive
the steps with ``engine.step_run`` against a loopback target)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from governance import services
from governance.models import Approval, ApprovalPolicy, BreakGlass, BreakGlassReview, StageGate
from ledger.models import Entry
from rollbacks import engine
from rollbacks.models import Rollback, Stage
from tests.rollbacks import engine_estate

pytestmark = pytest.mark.django_db
R = Rollback.State
HTMX = {"HTTP_HX_REQUEST": "true"}
PII = {"key": "pii", "label": "Personal data impact checked"}


def _policy(name="critical", *, groups=(), **kw):
    kw.setdefault("tiers", [1])
    kw.setdefault("approvals_required", 1)
    policy = ApprovalPolicy.objects.create(name=name, **kw)
    policy.eligible_groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return policy


def _user(django_user_model, name, *groups):
    user = django_user_model.objects.create_user(name, password="pw")
    user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])
    return user


@pytest.fixture
def estate(make_system, target_server):
    return engine_estate.build(make_system, target_server[0])


@pytest.fixture
def plan(estate, alice):
    counter = iter(range(1, 1000))

    def make(*, orders=1, actor=None):
        run = engine_estate.failed_run(orders=orders, external_id=f"run-{next(counter)}")
        return engine.rollback_plan(run=run, actor=actor or alice, reason="checkout broke orders")

    return make


@pytest.fixture
def awaiting(plan):
    _policy(attestations=[PII], expires_after_s=1800)
    rollback = plan()
    assert rollback.state == R.AWAITING_APPROVAL
    return rollback


@pytest.fixture
def erin(django_user_model, teams):
    return _user(django_user_model, "erin", "approver", "team:payments")


def _page(client, user, rollback, **extra):
    client.force_login(user)
    return client.get(reverse("rollback", args=[rollback.pk]), **extra)


def _text(response) -> str:
    return response.content.decode()


def _url(name, rollback, *args):
    return reverse(name, args=[rollback.pk, *args])


def _approve(client, rollback, **data):
    return client.post(_url("rollback-approve", rollback), data)


def _state(rollback) -> str:
    rollback.refresh_from_db()
    return rollback.state


def _with_break_glass_right(user):
    user.user_permissions.add(Permission.objects.get(codename="use_break_glass"))
    return type(user).objects.get(pk=user.pk)  # drop the permission cache


# The policy decision and the approval panel ---------------------------------------------------


def test_requester_sees_the_policy_and_why_she_cannot_approve(client, alice, awaiting):
    alice.groups.add(Group.objects.get(name="approver"))  # even as an approver: four-eyes
    text = _text(_page(client, alice, awaiting))
    assert "Approval policy" in text and awaiting.policy_decision.explanation in text
    assert "critical</span> applies: tier 1: orders-db, payment-gateway" in text
    assert "Received 0 of 1 approvals:</strong> 1 more needed" in text
    assert "four-eyes: the requester never approves their own rollback" in text
    assert 'id="approve-button"' not in text and 'id="approval-form"' not in text
    assert 'id="approval-panel"' in text  # the blast radius, and the reason instead of a form


def test_approver_sees_the_blast_radius_above_the_panel(client, bob, plan):
    _policy(attestations=[PII])
    rollback = plan(orders=2)
    text = _text(_page(client, bob, rollback))
    panel = text[text.index('id="approval-panel"') :]
    # The approval panel is the approver's first screen, above the plan (issue 15).
    assert text.index('id="approval-panel"') < text.index('id="plan-title"')
    assert "6 in 3 stages (1 by hand)" in panel  # flag, 2 × API, 2 × DB, payment (manual)
    assert "<dt>Teams</dt><dd>Payments</dd>" in panel
    assert "<dt>Tiers touched</dt><dd>1, 2, 3</dd>" in panel
    assert '<span class="slug">orders-db</span> (tier 1, Payments, production)' in panel
    assert 'id="approve-button"' in panel and 'id="reject-button"' in panel
    assert '<label for="attest-pii">Personal data impact checked</label>' in panel
    assert 'href="#approval-panel"' in text


def test_approver_approves_with_a_comment_and_the_attestation(client, bob, awaiting):
    client.force_login(bob)
    response = _approve(
        client,
        awaiting,
        comment="plan checked with payments",
        **{"attest-pii": "on", "attest-pii-comment": "no personal data in these orders"},
    )
    assert response.status_code == 302 and response["Location"] == _url("rollback", awaiting)
    assert _state(awaiting) == R.APPROVED
    approval = Approval.objects.get(rollback=awaiting)
    assert approval.approver == bob and approval.comment == "plan checked with payments"
    assert approval.attestations == {"pii": "no personal data in these orders"}
    assert approval.expires_at is not None
    assert Entry.objects.filter(action="approval.given", actor_user=bob).exists()
    text = _text(client.get(_url("rollback", awaiting)))
    assert f"You approved rollback #{awaiting.pk}: it may start." in text
    row = text[text.index(f'id="approval-{approval.pk}"') :]
    assert "bob" in row and "no personal data in these orders" in row
    assert approval.expires_at.strftime("%Y-%m-%d %H:%M") in row


def test_a_missing_attestation_is_a_400_next_to_the_field_and_writes_nothing(client, bob, awaiting):
    client.force_login(bob)
    entries = Entry.objects.count()
    response = _approve(client, awaiting, comment="looks right")
    assert response.status_code == 400
    text = _text(response)
    assert re.search(
        r'id="attest-pii".*aria-invalid="true".*id="attest-pii-errors"[^>]*><li>Tick “Personal data impact checked” to attest it.',
        text,
        re.S,
    )
    assert 'id="attest-pii-comment-errors"' in text
    assert "looks right</textarea>" in text  # what was typed is kept
    assert Approval.objects.count() == 0 and Entry.objects.count() == entries
    assert _state(awaiting) == R.AWAITING_APPROVAL


def test_an_empty_comment_is_refused_next_to_the_comment(client, bob, awaiting):
    client.force_login(bob)
    response = _approve(client, awaiting, comment="  ", **{"attest-pii": "on"})
    assert response.status_code == 400
    assert 'id="approval-comment-errors"' in _text(response)
    assert Approval.objects.count() == 0


def test_quorum_of_two_shows_who_approved_and_what_is_missing(client, bob, erin, plan):
    _policy(approvals_required=2)
    rollback = plan()
    services.rollback_approve(rollback=rollback, approver=bob, comment="first look")
    text = _text(_page(client, erin, rollback))
    assert "Approvals received: 1 of 2 needed" in text
    assert "Received 1 of 2 approvals:</strong> 1 more needed" in text
    assert 'id="approve-button"' in text
    bob_text = _text(_page(client, bob, rollback))
    assert 'id="approve-button"' not in bob_text and "You have approved this rollback" in bob_text
    client.force_login(erin)
    assert _approve(client, rollback, comment="second look").status_code == 302
    assert _state(rollback) == R.APPROVED


def test_expired_and_withdrawn_approvals_are_marked_and_do_not_count(client, bob, erin, plan):
    _policy(approvals_required=2, expires_after_s=600)
    rollback = plan()
    old = services.rollback_approve(rollback=rollback, approver=bob, comment="ok")
    Approval.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    mine = services.rollback_approve(rollback=rollback, approver=erin, comment="ok too")
    text = _text(_page(client, erin, rollback))
    assert re.search(rf'id="approval-{old.pk}".*?<span class="tag">expired</span>', text, re.S)
    assert "Approvals received: 1 of 2 needed" in text
    response = client.post(
        _url("approval-revoke", rollback, mine.pk), {"reason": "missed the billing impact"}
    )
    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.revoked_reason == "missed the billing impact"
    text = _text(client.get(_url("rollback", rollback)))
    assert "Withdrawn" in text and "Approvals received: 0 of 2 needed" in text
    # Someone else's approval is not theirs to withdraw.
    other = services.rollback_approve(rollback=rollback, approver=erin, comment="again")
    client.force_login(bob)
    assert (
        client.post(_url("approval-revoke", rollback, other.pk), {"reason": "x"}).status_code == 403
    )


def test_reject_needs_a_comment_and_aborts_the_rollback(client, bob, awaiting):
    client.force_login(bob)
    response = client.post(_url("rollback-reject", awaiting), {"comment": ""})
    assert response.status_code == 400 and 'id="approval-comment-errors"' in _text(response)
    assert _state(awaiting) == R.AWAITING_APPROVAL
    # A rejection needs no attestation.
    response = client.post(_url("rollback-reject", awaiting), {"comment": "wrong run"})
    assert response.status_code == 302
    assert _state(awaiting) == R.ABORTED
    assert Approval.objects.get().decision == Approval.Decision.REJECT


def test_approving_what_no_longer_awaits_approval_says_so(client, bob, erin, awaiting):
    services.rollback_reject(rollback=awaiting, approver=erin, comment="no")
    client.force_login(bob)
    response = _approve(
        client, awaiting, comment="ok", **{"attest-pii": "on", "attest-pii-comment": "x"}
    )
    assert response.status_code == 302
    text = _text(client.get(response["Location"]))
    assert "it does not await approval" in text and 'class="message error"' in text


def test_auditor_reads_the_approvals_but_cannot_act(client, carol, bob, awaiting):
    services.rollback_approve(
        rollback=awaiting, approver=bob, comment="ok", attestations={"pii": "none"}
    )
    Rollback.objects.filter(pk=awaiting.pk).update(state=R.AWAITING_APPROVAL)
    text = _text(_page(client, carol, awaiting))
    assert "none" in text and "bob" in text
    assert 'id="approval-form"' not in text
    assert "only an approver may approve or reject" in text
    for name in ("rollback-approve", "rollback-reject", "rollback-break-glass"):
        response = client.post(
            _url(name, awaiting), {"comment": "ok", "reason": "x" * 20, "confirm": "on"}
        )
        assert response.status_code == 403, name
    assert Approval.objects.count() == 1 and _state(awaiting) == R.AWAITING_APPROVAL
    assert Entry.objects.filter(actor_user=carol, outcome="refused").count() == 3


def test_operator_who_is_not_an_approver_is_refused(client, django_user_model, awaiting):
    olga = _user(django_user_model, "olga", "operator", "team:payments")
    assert "only an approver may approve" in _text(_page(client, olga, awaiting))
    assert _approve(client, awaiting, comment="ok").status_code == 403


def test_requester_post_is_refused_with_four_eyes(client, alice, awaiting):
    alice.groups.add(Group.objects.get(name="approver"))
    client.force_login(alice)
    response = _approve(
        client, awaiting, comment="mine", **{"attest-pii": "on", "attest-pii-comment": "x"}
    )
    assert response.status_code == 403
    assert Approval.objects.count() == 0
    refused = Entry.objects.get(action="approval.give", outcome="refused")
    assert "four-eyes" in refused.reason


def test_ineligible_group_sees_which_group_the_policy_needs(client, bob, plan):
    _policy(groups=["sre-leads"])
    rollback = plan()
    text = _text(_page(client, bob, rollback))
    assert "the policy needs an approver from sre-leads" in text
    assert 'id="approval-form"' not in text


def test_outsider_gets_404_everywhere(client, mallory, bob, awaiting):
    approval = services.rollback_approve(
        rollback=awaiting, approver=bob, comment="ok", attestations={"pii": "none"}
    )
    client.force_login(mallory)
    assert client.get(_url("rollback", awaiting)).status_code == 404
    for url in (
        _url("rollback-approve", awaiting),
        _url("rollback-reject", awaiting),
        _url("approval-revoke", awaiting, approval.pk),
        _url("rollback-break-glass", awaiting),
        _url("break-glass-review", awaiting),
        _url("gate-open", awaiting, 3),
    ):
        assert client.post(url, {"comment": "x", "reason": "x" * 20}).status_code == 404, url
    assert client.get(reverse("approvals")).status_code == 200
    assert f"Rollback #{awaiting.pk}" not in _text(client.get(reverse("approvals")))


def test_governance_posts_only_accept_post_and_need_login(client, bob, awaiting):
    assert client.post(_url("rollback-approve", awaiting)).status_code == 302  # to login
    assert client.get(reverse("approvals")).status_code == 302
    assert client.get(reverse("approvals-count"), **HTMX).status_code == 204  # swaps nothing
    client.force_login(bob)
    assert client.get(_url("rollback-approve", awaiting)).status_code == 405


def test_a_rollback_without_policy_says_no_approval_is_required(client, alice, plan):
    rollback = plan()
    text = _text(_page(client, alice, rollback))
    assert "No approval policy applies: no approval is required." in text
    assert 'id="approval-panel"' not in text


# Live updates ----------------------------------------------------------------------------------


def test_the_poll_notices_a_new_approval(client, bob, erin, plan):
    _policy(approvals_required=2)
    rollback = plan()
    client.force_login(erin)
    page = _text(client.get(_url("rollback", rollback)))
    version = re.search(r"\?v=([0-9a-f]+)", page).group(1)
    poll = f"{_url('rollback', rollback)}?v={version}"
    assert client.get(poll, **HTMX).status_code == 204
    services.rollback_approve(rollback=rollback, approver=bob, comment="ok")
    fragment = client.get(poll, **HTMX)
    assert fragment.status_code == 200
    text = _text(fragment)
    assert text.lstrip().startswith('<section id="rollback-status"')
    assert "Approvals received: 1 of 2 needed" in text and 'id="approval-panel"' in text


def test_the_approval_panel_is_a_live_panel_of_the_status(rf, bob, awaiting):
    """Declared in settings.UNWIND_ROLLBACK_PANELS, rendered inside the polled status."""
    from rollbacks import views

    request = rf.get("/")
    request.user = bob
    request.htmx = False
    context = views._rollback_context(request, awaiting)
    [panel] = context["live"]["action"]
    assert panel.key == "approval-panel" and panel.needs_you
    assert panel.html().lstrip().startswith('<section id="approval-panel"')
    assert context["headline"]["detail"] == "0 of 1 approvals received"


# Break-glass -----------------------------------------------------------------------------------


def test_break_glass_is_for_operators_holding_the_right(client, alice, bob, awaiting):
    assert 'id="break-glass-start"' not in _text(_page(client, alice, awaiting))
    client.force_login(alice)
    response = client.post(
        _url("rollback-break-glass", awaiting), {"reason": "orders double charged", "confirm": "on"}
    )
    assert response.status_code == 403 and _state(awaiting) == R.AWAITING_APPROVAL
    bob = _with_break_glass_right(bob)  # the right without the operator role is not enough
    assert 'id="break-glass-start"' not in _text(_page(client, bob, awaiting))


def test_break_glass_needs_a_reason_and_a_confirmation(client, alice, awaiting):
    alice = _with_break_glass_right(alice)
    text = _text(_page(client, alice, awaiting))
    assert 'id="break-glass-start"' in text and '<label for="break-glass-reason">' in text
    response = client.post(_url("rollback-break-glass", awaiting), {"reason": "too short"})
    assert response.status_code == 400
    text = _text(response)
    assert 'id="break-glass-reason-errors"' in text and 'id="break-glass-confirm-errors"' in text
    assert not BreakGlass.objects.exists() and _state(awaiting) == R.AWAITING_APPROVAL


def test_break_glass_is_flagged_everywhere_and_reviewed_by_two_others(
    client, alice, bob, carol, dave, awaiting
):
    alice = _with_break_glass_right(alice)
    client.force_login(alice)
    response = client.post(
        _url("rollback-break-glass", awaiting),
        {"reason": "orders are being double charged", "confirm": "on"},
    )
    assert response.status_code == 302 and _state(awaiting) == R.RUNNING
    text = _text(client.get(_url("rollback", awaiting)))
    assert '<span class="tag break-glass">break-glass</span>' in text
    assert "Break-glass: started without approval" in text
    assert "orders are being double charged" in text and "Reviews: 0 of 2" in text
    assert 'id="break-glass-review-form"' not in text  # not the one who used it
    listing = _text(client.get(reverse("rollbacks")))
    assert '<span class="tag break-glass">break-glass</span>' in listing
    assert client.post(_url("break-glass-review", awaiting), {"comment": "self"}).status_code == 403

    assert 'id="break-glass-review-form"' in _text(_page(client, bob, awaiting))
    response = client.post(_url("break-glass-review", awaiting), {"comment": ""})
    assert response.status_code == 400 and 'id="review-comment-errors"' in _text(response)
    assert (
        client.post(_url("break-glass-review", awaiting), {"comment": "justified"}).status_code
        == 302
    )
    assert 'id="break-glass-review-form"' not in _text(client.get(_url("rollback", awaiting)))
    assert (
        client.post(_url("break-glass-review", awaiting), {"comment": "again"}).status_code == 403
    )

    _page(client, carol, awaiting)
    assert (
        client.post(_url("break-glass-review", awaiting), {"comment": "ledger matches"}).status_code
        == 302
    )
    text = _text(_page(client, dave, awaiting))
    assert "Reviews: 2 of 2: reviewed." in text and 'id="break-glass-review-form"' not in text
    assert list(BreakGlassReview.objects.values_list("reviewer__username", flat=True)) == [
        "bob",
        "carol",
    ]


# Stage gates -----------------------------------------------------------------------------------


@pytest.fixture
def gated(plan, alice):
    """A running rollback whose stage 3 (tier 1) waits at its gate."""
    _policy("gate-critical", approvals_required=0, gate_tiers=[1])
    rollback = plan()
    engine.rollback_start(rollback=rollback, actor=alice)
    for step in rollback.steps.filter(stage__index__in=(1, 2)):
        engine.step_run(step_id=step.pk)
    assert StageGate.objects.filter(rollback=rollback, stage_index=3, opened_at=None).exists()
    return rollback


def test_a_stage_waiting_at_its_gate_says_so_and_approvers_open_it(client, alice, bob, gated):
    text = _text(_page(client, alice, gated))
    assert "waiting for an approver to open the gate" in text
    assert 'id="stage-3-gate-button"' not in text and "You cannot open it" in text
    assert '<span class="tag gate">gate</span>' in text
    # The status line says why it does not go on (the gate panel's headline).
    assert '<span id="state-badge" class="badge state-halted">halted</span>' in text
    assert "stage 3 waits for an approver to open its gate" in text
    assert "What it waits for" in text  # alice cannot open it
    text = _text(_page(client, bob, gated))
    assert '<label for="stage-3-gate-comment">' in text and 'id="stage-3-gate-button"' in text
    assert "What needs you now" in text  # bob can
    url = _url("gate-open", gated, 3)
    response = client.post(url, {"comment": ""})
    assert response.status_code == 400 and 'id="stage-3-gate-errors"' in _text(response)
    assert client.post(url, {"comment": "DBA on the call"}).status_code == 302
    assert gated.stages.get(index=3).state == Stage.State.RUNNING
    text = _text(client.get(_url("rollback", gated)))
    assert "Gate opened by <strong>bob</strong>" in text and "DBA on the call" in text
    # Opening it again is not a field error: the page says so.
    response = client.post(url, {"comment": "again"})
    assert response.status_code == 302
    assert "is not waiting at a gate" in _text(client.get(response["Location"]))


def test_only_eligible_approvers_open_a_gate(client, alice, carol, gated):
    for user in (alice, carol):
        client.force_login(user)
        assert client.post(_url("gate-open", gated, 3), {"comment": "ok"}).status_code == 403
    assert StageGate.objects.get(rollback=gated, stage_index=3).opened_at is None


# My pending approvals --------------------------------------------------------------------------


def test_pending_approvals_lists_what_i_could_approve(client, bob, alice, erin, plan):
    _policy(attestations=[PII], expires_after_s=1800)
    mine = plan()
    client.force_login(bob)
    text = _text(client.get(reverse("approvals")))
    assert f"Rollback #{mine.pk}</a>" in text
    row = text[text.index(f'id="pending-{mine.pk}"') :]
    assert '<span class="slug">critical</span>' in row and "0 of 1" in row
    assert "Personal data impact checked" in row and "approvals count for 30 min" in row
    assert "alice" in row
    badge = _text(client.get(reverse("approvals-count"), **HTMX))
    assert '<span id="approvals-count" class="badge count">1<' in badge
    services.rollback_approve(
        rollback=mine, approver=erin, comment="ok", attestations={"pii": "none"}
    )
    assert f"Rollback #{mine.pk}" not in _text(client.get(reverse("approvals")))


def test_pending_approvals_leave_out_own_decided_and_ineligible(
    client, django_user_model, alice, bob, plan
):
    _policy(approvals_required=2)
    requested_by_bob_too = _user(
        django_user_model, "opbob", "operator", "approver", "team:payments"
    )
    own = plan(actor=requested_by_bob_too)
    decided = plan()
    services.rollback_approve(rollback=decided, approver=bob, comment="ok")
    client.force_login(requested_by_bob_too)
    text = _text(client.get(reverse("approvals")))
    assert f"Rollback #{own.pk}<" not in text and f"Rollback #{decided.pk}<" in text
    client.force_login(bob)
    text = _text(client.get(reverse("approvals")))
    assert f"Rollback #{decided.pk}<" not in text and f"Rollback #{own.pk}<" in text
    client.force_login(alice)  # an operator: not an approver
    assert "Only approvers approve rollbacks" in _text(client.get(reverse("approvals")))
    assert "badge" not in _text(client.get(reverse("approvals-count"), **HTMX))


def test_the_navigation_links_to_approvals_and_loads_the_badge(client, bob, awaiting):
    text = _text(_page(client, bob, awaiting))
    assert '<a href="/approvals/">Approvals' in text
    assert 'hx-get="/approvals/count" hx-trigger="load"' in text


def test_pending_approvals_take_a_constant_number_of_queries(client, bob, plan):
    _policy()
    counts = []
    for n in (1, 6):
        while Rollback.objects.filter(state=R.AWAITING_APPROVAL).count() < n:
            plan()
        client.force_login(bob)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(reverse("approvals")).status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


# Query counts and hygiene ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["bob", "alice"])
def test_rollback_page_awaiting_approval_takes_a_constant_number_of_queries(
    client, request, plan, who
):
    _policy(attestations=[PII])
    user = request.getfixturevalue(who)
    counts = []
    for orders in (1, 12):
        rollback = plan(orders=orders)
        client.force_login(user)
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(_url("rollback", rollback)).status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


def test_governance_markup_has_no_inline_script_and_every_control_is_labelled(
    client, bob, alice, awaiting
):
    for user in (bob, _with_break_glass_right(alice)):
        text = _text(_page(client, user, awaiting))
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert " src=" in tag, tag
        assert not re.search(r"\sstyle\s*=", text) and "hx-on" not in text
        fields = re.findall(r"<(?:textarea|input)\b[^>]*\bid=\"([^\"]+)\"", text)
        assert fields
        for field_id in fields:
            assert f'<label for="{field_id}">' in text, field_id
        headings = [int(level) for level in re.findall(r"<h([1-6])\b", text)]
        assert all(b - a <= 1 for a, b in zip(headings, headings[1:], strict=False)), headings


# Composition -------------------------------------------------------------------------------------


def test_rollbacks_templates_name_no_other_app_and_load_no_query_running_tag():
    """Governance's parts of the rollback page are panels declared in settings
    (UNWIND_ROLLBACK_PANELS), not templates the rollback page includes by name."""
    from pathlib import Path

    from django.conf import settings

    folder = Path(settings.BASE_DIR) / "templates" / "rollbacks"
    for template in folder.glob("*.html"):
        text = template.read_text()
        for name in re.findall(r'{%\s*include\s+"([^"]+)"', text):
            assert name.startswith("rollbacks/"), f"{template.name} includes {name}"
        for libraries in re.findall(r"{%\s*load\s+([^%]+)%}", text):
            assert set(libraries.split()) <= {"static", "partials"}, template.name
    declared = settings.UNWIND_ROLLBACK_PANELS
    for key in ("approval-panel", "break-glass-start", "break-glass", "stage-gate"):
        assert declared[key].startswith("governance.panels."), key
    assert declared["policy-decision"] == "governance.panels.policy"


def test_live_panels_come_with_the_status_not_on_their_own(client, bob, awaiting):
    client.force_login(bob)
    base = f"/rollbacks/{awaiting.pk}/panels"
    assert client.get(f"{base}/approval-panel").status_code == 404  # in the status fragment
    assert client.get(f"{base}/report-status").status_code == 200  # polls itself


def test_a_refused_approval_shows_the_errors_with_every_panel_of_the_page(client, bob, awaiting):
    client.force_login(bob)
    response = client.post(_url("rollback-approve", awaiting), {"comment": ""})
    text = _text(response)
    assert response.status_code == 400 and 'id="approval-form"' in text
    assert 'id="timeline"' in text and 'id="report-status"' in text  # panels from settings
