"""Every page a user can reach, as each role: a strict Content-Security-Policy, no inline
script, style or event handler, and a label for every form control.

The pages are those of ``tests/test_access_walk.py`` (its table says who may see what), so
a new page is checked here as soon as it is in that table.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.http import HttpResponse

from tests.test_access_walk import PAGES, ROLES, world  # noqa: F401 (world is a fixture)

pytestmark = pytest.mark.django_db
UNLABELLED_TYPES = {"hidden", "submit", "button", "reset", "image"}


class PageAudit(HTMLParser):
    """Collects what a strict CSP would refuse and the form controls with no label."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.label_for: set[str] = set()
        self.controls: list[tuple[str, dict[str, str | None], bool]] = []
        self.label_depth = 0
        self.styles: list[str] = []  # the text of each inline <style>
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in a:
            if name == "style":
                self.problems.append(f"style= attribute on <{tag}>")
            if name.startswith("on") or name.startswith("hx-on"):
                self.problems.append(f"{name}= handler on <{tag}>")
        if tag == "script" and not a.get("src"):
            self.problems.append("inline <script> without src")
        if tag == "style":
            self._in_style = True
            self.styles.append("")
        if tag == "label":
            self.label_depth += 1
            if a.get("for"):
                self.label_for.add(a["for"])
        is_control = tag in ("select", "textarea") or (
            tag == "input" and (a.get("type") or "text") not in UNLABELLED_TYPES
        )
        if is_control:
            self.controls.append((tag, a, self.label_depth > 0))

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles[-1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        if tag == "label":
            self.label_depth = max(self.label_depth - 1, 0)

    def unlabelled(self) -> list[str]:
        return [
            f"<{tag} name={a.get('name')!r}> has no label"
            for tag, a, inside_label in self.controls
            if not (
                inside_label
                or a.get("aria-label")
                or a.get("aria-labelledby")
                or (a.get("id") and a["id"] in self.label_for)
            )
        ]


def csp_problems(header: str) -> list[str]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    problems = []
    for kind in ("script-src", "style-src"):
        sources = directives.get(kind, directives.get("default-src"))
        if sources is None:
            problems.append(f"no {kind} nor default-src")
            continue
        bad = {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"} & set(sources)
        if bad:
            problems.append(f"{kind} allows {sorted(bad)}")
    if directives.get("object-src") != ["'none'"]:
        problems.append("object-src is not 'none'")
    return problems


def style_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def audit(response) -> list[str]:
    """What a strict CSP would refuse. An inline <style> passes only in a download (a file
    opened offline, like the printable report) whose own CSP allows exactly its hash."""
    header = response.get("Content-Security-Policy", "")
    problems = csp_problems(header) if header else ["no Content-Security-Policy header"]
    parser = PageAudit()
    parser.feed(response.content.decode())
    download = response.get("Content-Disposition", "").startswith("attachment")
    for text in parser.styles:
        if not (download and style_hash(text) in header):
            problems.append("inline <style>")
    return problems + parser.problems + parser.unlabelled()


def test_audit_catches_what_it_looks_for():
    parser = PageAudit()
    parser.feed(
        '<script>alert(1)</script><p style="x" onclick="y"></p><input name="q">'
        '<label for="a">A</label><input id="a" name="a"><label>B <select name="b"></select></label>'
    )
    assert parser.problems == [
        "inline <script> without src",
        "style= attribute on <p>",
        "onclick= handler on <p>",
    ]
    assert parser.unlabelled() == ["<input name='q'> has no label"]
    page = HttpResponse("<style>p{}</style>")
    page["Content-Security-Policy"] = (
        f"default-src 'self'; object-src 'none'; style-src {style_hash('p{}')}"
    )
    assert audit(page) == ["inline <style>"]  # a page, not a download
    page["Content-Disposition"] = 'attachment; filename="r.html"'
    assert audit(page) == []
    page["Content-Security-Policy"] = "default-src 'self'; object-src 'none'"
    assert audit(page) == ["inline <style>"]  # a download whose CSP does not allow it
    assert csp_problems("default-src 'self'; script-src 'self' 'unsafe-inline'") == [
        "script-src allows [\"'unsafe-inline'\"]",
        "object-src is not 'none'",
    ]


def test_every_reachable_page_is_csp_safe_and_labelled(client, world):  # noqa: F811
    checked, problems = 0, []
    for _route, method, url_for, expected in PAGES:
        if method != "get":
            continue
        for side in ("own", "foreign"):
            want = expected.get(side, expected)
            url = url_for(world["objects"][side])
            for role in ROLES:
                if role == "anon" or want[role] != 200:
                    continue
                client.force_login(world["users"][role])
                response = client.get(url)
                assert response.status_code == 200, f"{url} as {role}"
                checked += 1
                problems += [f"{url} as {role}: {p}" for p in audit(response)]
    # Pages that show a form's errors, and the overview's polled fragment.
    client.force_login(world["users"]["carol"])
    for url, status, headers in (
        ("/metrics/?since=2026-03-31&until=2026-03-01&bucket=day", 400, {}),
        ("/", 200, {"HX-Request": "true"}),
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == status, url
        problems += [f"{url}: {p}" for p in audit(response)]
    client.logout()
    response = client.get("/login/")
    problems += [f"/login/: {p}" for p in audit(response)]
    assert checked > 30
    assert not problems, "\n".join(sorted(set(problems)))


def test_pages_name_an_icon_that_exists(client):
    """A page that names no icon makes every browser ask for /favicon.ico: a 404 in the
    console of every page."""
    html = client.get("/login/").content.decode()
    icon = re.search(r'<link rel="icon" href="([^"]+)"', html)
    assert icon, "the base template names no icon"
    assert finders.find(icon.group(1).removeprefix(settings.STATIC_URL))
