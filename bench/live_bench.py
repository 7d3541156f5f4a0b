"""Commit-to-browser latency of the rollback timeline: server-sent events against the
one-second cursor poll, in real Chromium against uvicorn (ASGI), as `make run` serves it.

    DEBUG=1 .venv/bin/python -m bench.live_bench [--commits 60]

For each mode, a rollback page is opened in headless Chromium (/usr/bin/chromium); then, one
at a time, an external event is committed to the database from this process, and the page
notes (a MutationObserver) when its item appears. Latency = the time the item appeared in
the page's DOM − the time the commit returned, both read from this machine's wall clock.
Commits are spaced at random (0.3–1.3 s) so that they fall anywhere in a poll's period.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time

from bench._harness import ROOT, Bench, machine, percentile

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
OBSERVE = """() => {
  window.__seen = {};
  const list = document.getElementById("timeline-items");
  new MutationObserver(() => {
    const now = performance.timeOrigin + performance.now();
    for (const el of list.querySelectorAll(".tl-title")) {
      const t = el.textContent;
      if (t.startsWith("probe-") && !(t in window.__seen)) window.__seen[t] = now;
    }
  }).observe(list, {childList: true, subtree: true});
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from bench._harness import make_estate
    from rollbacks import engine, runs

    slugs = ["live-a", "live-b"]
    make_estate(slugs, edges=[("before", "live-a", "live-b")])
    user = get_user_model().objects.create_user("bench-live", password="bench-live-pw")
    user.groups.add(
        Group.objects.get(name="team:bench"), Group.objects.get_or_create(name="operator")[0]
    )
    run, _ = runs.run_register(process="live", external_id="1", actor=user)
    for i, slug in enumerate(slugs * 3):
        runs.action_report(
            run=run, system_slug=slug, action_type="undo", idempotency_key=f"k{i}", actor=user
        )
    return engine.rollback_plan(run=run, actor=user, reason="bench")


def serve(b: Bench, port: int) -> subprocess.Popen:
    log = open(b.workdir / "uvicorn.log", "a")  # noqa: SIM115 - closed with the process
    env = os.environ | {"DATABASE_URL": b.database_url, "DEBUG": "1", "LOG_LEVEL": "WARNING"}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    b.workers.append(proc)  # stopped with the bench, whatever happens
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    raise RuntimeError("uvicorn did not start: " + (b.workdir / "uvicorn.log").read_text()[-2000:])


def run_mode(b: Bench, page, base: str, rollback, mode: str, commits: int) -> list[float]:
    from django.utils import timezone

    from timeline.models import Event

    page.goto(f"{base}/rollbacks/{rollback.pk}/?live={mode}")
    marker = "#timeline-live" if mode == "sse" else "#timeline-poll"
    page.wait_for_selector(marker, state="attached")
    page.evaluate(OBSERVE)
    time.sleep(1.5)  # the stream is open, the poll has started
    committed: dict[str, float] = {}
    for i in range(commits):
        title = f"probe-{mode}-{i}"
        now = timezone.now()
        Event.objects.create(
            kind="note",
            source="bench",
            title=title,
            rollback=rollback,
            occurred_at=now,
            received_at=now,
        )  # autocommit: committed when create() returns
        committed[title] = time.time() * 1000
        time.sleep(random.uniform(0.3, 1.3))
    time.sleep(2)
    seen = page.evaluate("() => window.__seen")
    missing = [t for t in committed if t not in seen]
    if missing:
        b.log(f"  {mode}: {len(missing)} items never appeared: {missing[:3]}")
    return [seen[t] - committed[t] for t in committed if t in seen]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=60)
    args = parser.parse_args()
    with Bench("live", limit_s=900) as b:
        from playwright.sync_api import sync_playwright

        # Playwright's sync API runs an event loop in this thread; the ORM calls here are
        # plain synchronous ones between its calls (as in tests/browser/conftest.py).
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

        rollback = setup()
        port = free_port()
        serve(b, port)
        base = f"http://127.0.0.1:{port}"
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            page = browser.new_page()
            page.goto(f"{base}/login/")
            page.get_by_label("Username").fill("bench-live")
            page.get_by_label("Password").fill("bench-live-pw")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
            for mode in ("poll", "sse"):
                b.log(f"{mode}: {args.commits} commits")
                results[mode] = run_mode(b, page, base, rollback, mode, args.commits)
            browser.close()
        print()
        print(f"machine: {machine()}")
        print(f"{args.commits} commits per mode, 0.3–1.3 s apart; uvicorn, one worker process")
        print("| transport | items seen | p50 | p95 | max |")
        print("|---|---|---|---|---|")
        for mode, xs in results.items():
            print(
                f"| {mode} | {len(xs)}/{args.commits} | {percentile(xs, 50):.0f} ms | "
                f"{percentile(xs, 95):.0f} ms | {max(xs):.0f} ms |"
            )
        if results["sse"] and results["poll"]:
            ratio = percentile(results["sse"], 95) / percentile(results["poll"], 95)
            print(f"p95 ratio sse / poll: {ratio:.2f}")


if __name__ == "__main__":
    main()
