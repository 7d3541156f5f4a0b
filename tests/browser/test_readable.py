"""Words and tables a tired person reads right, and no serious or critical axe-core
violation on any page for any role (issue 15), on a finished rollback and a finished drill
of the demo run, played in this process (engine.step_run) against the demo's targets.

axe-core 4.10.2 is vendored under tests/browser/vendor/axe-core/ (MPL-2.0, its licence
beside it, unmodified), so no test needs the npm registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from governance import services as governance
from reconcile.models import CheckResult, Finding, Reconciliation
from rollbacks import engine, runs
from rollbacks.models import ProcessRun, Rollback, Step
from tests.browser.cockpit import Person, seed_steady_demo
from tests.browser.conftest import screenshot

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(480),
    pytest.mark.django_db(transaction=True),
]

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
WIDTHS = (1024, 1280, 1440)
S = Step.State

# Every word of every table cell on one line: a word whose text spans two line boxes was
# broken inside ("STE P", "ali ce", "#5/4"). A break after a hyphen is a line break the
# way print does it, not inside a word: each part up to a hyphen is checked on its own.
BROKEN_WORDS = """() => {
  const broken = [];
  for (const cell of document.querySelectorAll("table th, table td")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode())) {
      const re = /[^\\s-]+-?/g;
      let m;
      while ((m = re.exec(node.textContent))) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set(Array.from(range.getClientRects())
          .filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}"""

# A box whose content overflows must take the keyboard focus, so it scrolls by keyboard.
UNREACHABLE_SCROLLERS = """() => Array.from(document.querySelectorAll("pre, code, .table-scroll"))
  .filter((el) => el.offsetParent !== null)
  .filter((el) => el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1)
  .filter((el) => el.tabIndex < 0 && !el.querySelector("a, button, input, textarea, select, [tabindex]"))
  .map((el) => el.outerHTML.slice(0, 120))"""


def _user(name):
    return get_user_model().objects.get(username=name)


def _play(*, is_drill: bool) -> Rollback:
    """Plan, approve, start and run the demo rollback to its end in this process."""
    alice = _user("alice")
    run = ProcessRun.objects.get(external_id="demo-1")
    rollback = engine.rollback_plan(
        run=run, actor=alice, reason="checkout migration failed", is_drill=is_drill
    )
    for name in ("bob", "erin"):
        governance.rollback_approve(
            rollback=rollback, approver=_user(name), comment="ok", attestations={"pii": "ids"}
        )
    engine.rollback_start(rollback=rollback, actor=alice)
    for _ in range(10):  # a stage's steps once the stage before has finished
        rollback.refresh_from_db()
        if rollback.is_terminal:
            break
        for step in Step.objects.filter(rollback=rollback).order_by("stage__index", "pk"):
            if step.state == S.WAITING_HUMAN:
                engine.step_resolve(step=step, actor=alice, note="refunded pay_3fa9 by hand")
            elif step.state in (S.PENDING, S.RUNNING) and not step.is_manual:
                engine.step_run(step_id=step.pk)
    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.SUCCEEDED, rollback.state
    return rollback


def _finding(rollback: Rollback) -> Finding:
    """A reconciliation that found an order left behind (what the worker's checks write)."""
    step = rollback.steps.select_related("system").filter(system__slug="orders-db").first()
    from django.utils import timezone

    rec = Reconciliation.objects.create(
        rollback=rollback, state=Reconciliation.State.DONE, finished_at=timezone.now()
    )
    result = CheckResult.objects.create(
        reconciliation=rec,
        system=step.system,
        check_name="orders_left_behind",
        outcome=CheckResult.Outcome.FINDINGS,
        detail="1 order row still there",
    )
    return Finding.objects.create(
        reconciliation=rec,
        result=result,
        fingerprint="orders-1001",
        rollback=rollback,
        system=step.system,
        check_name="orders_left_behind",
        category="orphaned_record",
        description="an order row the run inserted is still in the orders database",
        details={"order_id": 1001, "table": "orders", "rows": [{"id": 1001, "status": "new"}] * 4},
        compensation={
            "kind": "sql",
            "target": "orders",
            "statement": "DELETE FROM orders WHERE id = 1001",
        },
    )


@pytest.fixture
def finished(transactional_db, demo_targets, tmp_path, monkeypatch):
    monkeypatch.setenv("TARGET_DATABASE_ORDERS", f"sqlite:///{tmp_path / 'orders.sqlite3'}")
    seed_steady_demo()
    real = _play(is_drill=False)
    drill = _play(is_drill=True)
    return {"real": real, "drill": drill, "finding": _finding(real)}


def test_words_and_tables_read_right_from_1024_to_1440_px(browser, live_server, finished):
    real, drill = finished["real"], finished["drill"]
    carol = Person(browser, live_server.url, "carol")
    carol.log_in()
    page = carol.page
    pages = {
        "rollback": f"/rollbacks/{real.pk}/",
        "drill": f"/rollbacks/{drill.pk}/",
        "report": f"/rollbacks/{real.pk}/report",
        "ledger": f"/ledger/?rollback={real.pk}",
        "overview": "/",
        "reconciliation": f"/reconcile/rollbacks/{real.pk}/",
    }
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        for name, path in pages.items():
            page.goto(live_server.url + path)
            page.evaluate(
                "() => document.querySelectorAll('details').forEach((d) => d.open = true)"
            )
            assert page.evaluate(BROKEN_WORDS) == [], f"{name} at {width} px"
            assert page.evaluate(UNREACHABLE_SCROLLERS) == [], f"{name} at {width} px"
            if width == 1280:
                screenshot(page, f"readable-{name}-{width}")

    # Human words for states, ids and key parameters in what was undone; a drill rehearses.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(live_server.url + f"/rollbacks/{real.pk}/")
    undone = page.locator("#undone-title + ul").inner_text()
    assert re.search(r"Step \d+: create_order on orders-api \(order id 1001\)", undone)
    assert re.search(r"Step \d+: create_order on orders-api \(order id 1002\)", undone)
    assert len(set(undone.splitlines())) == len(undone.splitlines())  # no two lines alike
    assert "waitinghuman" not in page.content() and "waiting_human" not in page.inner_text("main")
    finding = page.locator(f"#finding-{finished['finding'].pk}")
    finding.wait_for()  # the panel loads itself
    text = finding.inner_text()
    assert (
        "Order id" in text
        and "1001" in text
        and "Statement" in text
        and "{" not in text.split("Rows")[0]
    )
    scroller = finding.locator("pre.payload")
    scroller.focus()
    assert page.evaluate("document.activeElement.tagName") == "PRE"
    before = scroller.evaluate("(el) => el.scrollTop")
    page.keyboard.press("PageDown")
    # It scrolls by keyboard. Chromium animates a keyboard scroll, so the new offset arrives
    # over a few frames: wait for it (bounded), rather than read it in the same instant.
    page.wait_for_function(
        "([el, before]) => el.scrollTop > before",
        arg=[scroller.element_handle(), before],
        timeout=5000,
    )

    page.goto(live_server.url + f"/rollbacks/{drill.pk}/")
    outcome = page.locator("#rollback-status").inner_text()
    assert "Rehearsed: 9 of 9 steps. A drill: nothing in production was touched." in outcome
    assert "What was rehearsed" in outcome and "every step was undone" not in outcome
    assert "Undone:" not in outcome
    page.goto(live_server.url + f"/rollbacks/{drill.pk}/report")
    report = page.locator("main").inner_text()
    assert "Rehearsed: 9 of 9 steps" in report and "Undone:" not in report
    assert carol.page.csp_violations == []
    carol.close()


def _axe(page) -> list[str]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _failed_run(external_id: str) -> ProcessRun:
    """Another failed run of the checkout migration, with the demo run's forward actions
    (one rollback may be under way per run)."""
    alice = _user("alice")
    run, _ = runs.run_register(process="checkout-migration", external_id=external_id, actor=alice)
    demo = ProcessRun.objects.get(external_id="demo-1")
    for action in demo.actions.select_related("system").order_by("sequence"):
        runs.action_report(
            run=run,
            system_slug=action.system.slug,
            action_type=action.action_type,
            params=action.params,
            idempotency_key=f"{external_id}-{action.sequence}",
            actor=alice,
        )
    return runs.run_fail(run=run, reason="timed out half-way", actor=alice)


def _under_way() -> dict[str, object]:
    """Rollbacks in the states whose first screen holds a control: awaiting approval (the
    approval panel, break-glass), halted on the manual step (the resolve form), started by
    break-glass (its banner and review form); and a failed run with no rollback yet (the
    overview's Plan form). No worker here: steps run in this process."""
    alice, dave = _user("alice"), _user("dave")

    def plan(external_id: str) -> Rollback:
        run = _failed_run(external_id)
        return engine.rollback_plan(run=run, actor=alice, reason="the run timed out")

    awaiting = plan("demo-awaiting")
    halted = plan("demo-halted")
    for name in ("bob", "erin"):
        governance.rollback_approve(
            rollback=halted, approver=_user(name), comment="ok", attestations={"pii": "ids"}
        )
    engine.rollback_start(rollback=halted, actor=alice)
    for _ in range(10):
        if halted.steps.filter(state=S.WAITING_HUMAN).exists():
            break
        for step in halted.steps.filter(state=S.PENDING, is_manual=False):
            engine.step_run(step_id=step.pk)
    assert halted.steps.filter(state=S.WAITING_HUMAN).exists()
    broken = plan("demo-broken")
    governance.rollback_break_glass(rollback=broken, actor=dave, reason="the payments are down")
    return {
        "awaiting": awaiting,
        "halted": halted,
        "broken": broken,
        "failed_run": _failed_run("demo-no-rollback"),
    }


def test_no_serious_or_critical_axe_violation_on_any_page_as_any_role(
    browser, live_server, finished
):
    real = finished["real"]
    live = _under_way()
    pages = [
        "/",
        "/systems/",
        "/systems/orders-db/",
        "/runs/",
        f"/runs/{real.run_id}/",
        "/rollbacks/",
        f"/rollbacks/{real.pk}/",
        f"/rollbacks/{finished['drill'].pk}/",
        f"/rollbacks/{real.pk}/report",
        f"/reconcile/rollbacks/{real.pk}/",
        "/runbooks/",
        "/runbooks/cancel-order/",
        "/approvals/",
        "/metrics/",
        "/ledger/",
        # The first screens that hold a control (and the overview's Needs action with them).
        f"/rollbacks/{live['awaiting'].pk}/",
        f"/rollbacks/{live['halted'].pk}/",
        f"/rollbacks/{live['broken'].pk}/",
        f"/runs/{live['failed_run'].pk}/",
    ]
    problems: dict[str, list[str]] = {}
    checked = 0
    # The check can fail: an image without a text alternative is a critical violation.
    probe = Person(browser, live_server.url, "carol", bypass_csp=True)
    probe.log_in()
    probe.page.evaluate(
        "document.querySelector('main').insertAdjacentHTML('beforeend', '<img src=/x>')"
    )
    assert any(v.startswith("image-alt (critical)") for v in _axe(probe.page))
    probe.close()
    for name in ("alice", "bob", "carol", "dave", "mallory"):
        person = Person(browser, live_server.url, name, bypass_csp=True)
        person.log_in()
        for path in pages:
            response = person.page.goto(live_server.url + path)
            if response.status in (403, 404):  # not theirs to see
                continue
            assert response.status == 200, (name, path, response.status)
            person.page.evaluate(
                "() => document.querySelectorAll('details').forEach((d) => d.open = true)"
            )
            checked += 1
            if found := _axe(person.page):
                problems[f"{name} {path}"] = found
        person.close()
    print(f"axe-core: {checked} pages checked")
    assert checked >= 60, checked
    assert problems == {}
