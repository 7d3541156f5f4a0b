"""The public API as the command line sees it: where it is, which token, and its errors.

The CLI talks to ``/api/v1/`` only (SPEC section 4), with a service account's bearer token,
exactly as an automated process would; it imports nothing of the server's code but the
offline export verifier (``ledger/verify_export.py``, which needs no Django).

Where the URL and the token come from, first found wins:

1. ``--url`` (the URL only: a token on the command line would show in ``ps`` and the shell's
   history), then the environment: ``UNWIND_URL`` and ``UNWIND_TOKEN``;
2. the config file: ``--config PATH``, else ``UNWIND_CONFIG``, else
   ``$XDG_CONFIG_HOME/unwind/config.toml`` (``~/.config/unwind/config.toml``), holding
   ``url = "…"`` and ``token = "…"``. A file that others may read is refused, as ssh does.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ConfigError(Exception):
    """The CLI cannot tell where the API is or which token to send."""


@dataclass
class ApiError(Exception):
    """An answer other than 2xx, with the fields the API named (``{"detail", "errors"}``)."""

    status: int
    detail: str
    errors: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}"


class Unreachable(Exception):
    """No answer at all: the server is down, the URL wrong, or it timed out."""


def config_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("UNWIND_CONFIG"):
        return Path(os.environ["UNWIND_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "unwind" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} holds a token and others may read it (mode {stat.filemode(mode)}): "
            f"chmod 600 {path}"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    unknown = sorted(set(data) - {"url", "token"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (use url and token)")
    return {k: str(v) for k, v in data.items()}


def resolve(url: str | None = None, config: str | None = None) -> tuple[str, str]:
    """(base URL, token), from the options, the environment and the config file."""
    path = config_path(config)
    from_file = read_config(path)
    base = url or os.environ.get("UNWIND_URL") or from_file.get("url") or DEFAULT_URL
    token = os.environ.get("UNWIND_TOKEN") or from_file.get("token")
    if not token:
        raise ConfigError(
            f'no API token: set UNWIND_TOKEN, or put token = "unw_…" in {path} '
            "(python manage.py create_service_token prints one)"
        )
    return base.rstrip("/"), token


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = str(body.get("detail") or response.reason_phrase or "error")
    errors = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    return ApiError(response.status_code, detail, errors)


class Client:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "unwind-cli"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of ``/api/v1<path>``, or ApiError / Unreachable."""
        try:
            response = self.http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.call("POST", path, json=body or {})

    @contextmanager
    def stream(self, path: str, params: dict[str, Any]) -> Iterator[httpx.Response]:
        """A streamed GET of a site path (not only the API: the export's manifest lives at
        ``/ledger/exports/<id>/manifest.json``)."""
        try:
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                yield response
        except httpx.HTTPError as exc:
            raise Unreachable(f"{self.base_url}: {exc}") from exc
