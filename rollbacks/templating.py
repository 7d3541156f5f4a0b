"""Fill a compensation's ``{root.field}`` templates, escaped for the place each value lands.

A contract is written by people, but the values come from the forward action a process
reported — untrusted input. So rendering never executes code: templates are parsed with
``string.Formatter().parse`` and each ``root.field`` (``params.customer.id``) is looked up
here, in plain dicts only, never through attributes. Fields that begin with ``_`` are
treated as missing, so ``{params.__class__}`` leads nowhere.

Escaping depends on the place (``render_compensation`` picks it per kind):

- URL: every value is quoted as one path segment, so ``../`` or ``?`` in a value cannot
  change which endpoint is called (``render_url``). A value that *is* ``.`` or ``..`` stays
  itself when quoted, and HTTP clients resolve such a segment away (httpx sends
  ``/things/../cancel`` as ``/cancel``): a rendered URL with a dot segment is refused, so the
  step becomes manual and the approver never sees a URL other than the one called.
- JSON bodies and SQL parameters: a string that is exactly one template keeps the value's
  type (an int stays an int, a dict stays a dict); anything else is text (``render_value``).
- SQL statements are never templated: values go in as driver parameters (``%(name)s``).
"""

from __future__ import annotations

import copy
import json
import string
import urllib.parse
from collections.abc import Callable
from typing import Any

_formatter = string.Formatter()


class TemplateError(ValueError):
    """A template names a field the context does not have, or is not a plain template."""


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(_formatter.parse(template))
    except ValueError as exc:
        raise TemplateError(f"{template!r} is not a valid template: {exc}") from exc


def _lookup(field: str, ctx: dict[str, Any]) -> Any:
    """``params.customer.id`` → ``ctx["params"]["customer"]["id"]``, dict keys only."""
    root, _, rest = field.partition(".")
    value = ctx.get(root)
    if root.startswith("_") or not rest or not isinstance(value, dict):
        raise TemplateError(f"{{{field}}}: no such field")
    for part in rest.split("."):
        if part.startswith("_") or not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{{{field}}}: no such field")
        value = value[part]
    return value


def _field(name: str, conversion: str | None, spec: str | None, ctx: dict[str, Any]) -> Any:
    # A conversion (!r) or format spec (:>10) is a small language of its own: not offered.
    if conversion or spec:
        raise TemplateError(f"{{{name}}}: conversions and format specs are not allowed")
    return _lookup(name, ctx)


def _text(value: Any) -> str:
    """A value as text: strings as they are, anything else as JSON (``true``, ``null``, ``5``)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _render_text(template: str, ctx: dict[str, Any], escape: Callable[[str], str]) -> str:
    out = []
    for literal, name, spec, conversion in _parse(template):
        out.append(literal)
        if name is not None:
            out.append(escape(_text(_field(name, conversion, spec, ctx))))
    return "".join(out)


def render_url(template: str, ctx: dict[str, Any]) -> str:
    """The URL with every substituted value quoted as a single path segment."""
    return _render_text(template, ctx, lambda v: urllib.parse.quote(v, safe=""))


def dot_segment(url: str) -> str:
    """The first ``.`` or ``..`` path segment of ``url`` (percent-encoded or not), or ''."""
    for segment in urllib.parse.urlsplit(url).path.split("/"):
        if urllib.parse.unquote(segment) in (".", ".."):
            return segment
    return ""


def _without_dot_segments(url: str, where: str) -> str:
    if segment := dot_segment(url):
        raise TemplateError(
            f"{where}: {segment!r} is a path segment of the rendered URL; HTTP clients "
            "resolve it away and would call another path"
        )
    return url


def render_value(value: Any, ctx: dict[str, Any]) -> Any:
    """A JSON body or SQL parameter: typed when a string is one whole template, else text."""
    if isinstance(value, dict):
        return {k: render_value(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, ctx) for v in value]
    if not isinstance(value, str):
        return value
    parts = _parse(value)
    if len(parts) == 1 and parts[0][0] == "" and parts[0][1] is not None:
        _, name, spec, conversion = parts[0]
        return _field(name, conversion, spec, ctx)
    return _render_text(value, ctx, lambda v: v)


def render_text(value: Any, ctx: dict[str, Any]) -> str:
    """A value that must end up as text (a header, a flag name, a database name)."""
    return _text(render_value(value, ctx))


def _sql_statement(statement: str) -> str:
    """The statement as written, refusing templates: values must travel as parameters."""
    parts = _parse(statement)
    for _, name, _, _ in parts:
        if name is not None:
            raise TemplateError(
                f"sql statement: {{{name}}} is a template; statements are not templated, "
                f"pass the value in params and write %({name.rpartition('.')[2]})s"
            )
    # ``{{``/``}}`` are how a contract writes a literal brace past the template checks.
    return "".join(literal for literal, _, _, _ in parts)


def _headers(headers: dict[str, Any], ctx: dict[str, Any]) -> dict[str, str]:
    rendered = {name: render_text(value, ctx) for name, value in headers.items()}
    for name, value in rendered.items():
        if "\r" in value or "\n" in value:  # would split into a second header
            raise TemplateError(f"header {name}: the rendered value contains a line break")
    return rendered


def render_compensation(spec: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """A new, fully rendered copy of a compensation, each field escaped for its place."""
    out = copy.deepcopy(spec)
    kind = spec.get("kind")
    if kind == "http":
        out["url"] = _without_dot_segments(render_url(spec["url"], ctx), "url")
        if "headers" in spec:
            out["headers"] = _headers(spec["headers"], ctx)
        if "body" in spec:
            out["body"] = render_value(spec["body"], ctx)
    elif kind == "flag":
        out["base_url"] = _without_dot_segments(render_url(spec["base_url"], ctx), "base_url")
        for name in ("project", "feature", "environment"):
            if name in spec:  # URL-quoted by the executor, when it builds the path
                out[name] = render_text(spec[name], ctx)
                _without_dot_segments(f"/{urllib.parse.quote(out[name], safe='')}/", name)
    elif kind == "sql":
        out["database"] = render_text(spec["database"], ctx)
        out["statement"] = _sql_statement(spec["statement"])
        out["params"] = render_value(spec.get("params") or {}, ctx)
    elif kind == "sql_restore":
        out["database"] = render_text(spec["database"], ctx)
        out["key"] = render_value(spec["key"], ctx)
    elif kind == "manual":
        out["instructions"] = render_text(spec["instructions"], ctx)
    elif kind != "simulated":
        raise TemplateError(f"unknown compensation kind {kind!r}")
    return out
