"""What the cockpit's browser tests share: a person with their own browser who counts their
clicks and refuses to click what the first screen (1280×800, not scrolled) does not show,
and the demo estate without its simulated 20 % failure (a Retry click the plan does not need)."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.management import call_command

from demo import seed
from rollbacks.estate import import_document, parse
from rollbacks.management.commands.seed_demo import DEMO_PASSWORD

VIEWPORT = {"width": 1280, "height": 800}


def seed_steady_demo() -> None:
    """The demo as seed_demo loads it, but its simulated ledger step never fails: seed_demo
    keeps an estate that is there already, so it adds only the users, runbooks and run."""
    text = seed.estate_text().replace("failure_rate: 0.2", "failure_rate: 0")
    import_document(parse(text), actor="test")
    call_command("seed_demo")


@dataclass
class Person:
    """One user in their own browser context at 1280×800."""

    browser: object
    base: str
    name: str
    clicks: list[str] = field(default_factory=list)
    bypass_csp: bool = False  # to inject a test's own script (axe-core)

    def __post_init__(self):
        self.context = self.browser.new_context(viewport=VIEWPORT, bypass_csp=self.bypass_csp)
        self.page = self.context.new_page()
        self.page.csp_violations = []
        self.page.on(
            "console",
            lambda msg: (
                self.page.csp_violations.append(msg.text)
                if "Content Security Policy" in msg.text
                else None
            ),
        )

    def click(self, locator, what: str, *, timeout_ms: int = 15_000) -> None:
        """Click ``locator`` if it is on the first screen: the page is not scrolled and the
        control lies wholly inside the 1280×800 viewport."""
        locator.wait_for(state="visible", timeout=timeout_ms)
        assert self.page.evaluate("window.scrollY") == 0, f"{self.name}: page scrolled"
        box = locator.bounding_box()
        assert box is not None, what
        assert box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"], (
            f"{self.name}: {what} is not on the first screen: {box}"
        )
        locator.click()
        self.clicks.append(what)

    def log_in(self, next_path: str = "/") -> None:
        page = self.page
        page.goto(f"{self.base}/login/?next={next_path}")
        page.get_by_label("Username").fill(self.name)
        page.get_by_label("Password").fill(DEMO_PASSWORD)
        self.click(page.get_by_role("button", name="Log in"), "log in")
        page.wait_for_url(f"{self.base}{next_path}")

    def close(self) -> None:
        self.context.close()
