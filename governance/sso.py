"""Single sign-on with OpenID Connect, on mozilla-django-oidc (docs/sso.md).

The library runs the authorization code flow with PKCE, and checks the state (kept in the
session) and the nonce (in the signed ID token, verified against the provider's JWKS).
This module adds what Unwind needs around it:

1. **Groups → roles and teams at every login.** The provider's group claim
   (``SSO_GROUPS_CLAIM``) maps to Unwind's groups (roles such as ``operator``, teams as
   ``team:<slug>``) through ``SSO_GROUP_MAP``. Every group the map can grant is *managed*:
   at each login the user holds exactly the managed groups their provider groups map to,
   so a group removed at the provider removes the role at the next login; an unknown
   user gets an account with no role (and sees nothing). Groups outside the map (lent by
   an admin, say) are left alone. Each login is ledgered with what it added and removed.
2. **A provider that is down gives a clear page**, not a 500: the start of the flow probes
   the provider, and the callback catches a failed token or userinfo request (503).
3. **A refused callback** (a tampered or replayed ``state``, a bad nonce or signature)
   gives a clear 400 page and a ledger entry, instead of Django's bare 400.
4. **Tokens are never logged**: nothing here logs a token, a code or a provider's
   answer; the tokens are not kept in the session (``OIDC_STORE_*_TOKEN`` off).
5. **Password login can be switched off** (``PASSWORD_LOGIN``): the form disappears and a
   POST to it is refused; settings then drop Django's password backend.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.models import Group
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

import ledger.services as ledger

logger = logging.getLogger(__name__)


def sso_enabled() -> bool:
    return bool(settings.OIDC_RP_CLIENT_ID)


def managed_groups() -> set[str]:
    """Every Unwind group the map can grant: these follow the provider at each login."""
    return {name for names in settings.SSO_GROUP_MAP.values() for name in names}


def groups_for(claims: dict) -> set[str]:
    """The Unwind groups the provider's groups in ``claims`` map to."""
    provided = claims.get(settings.SSO_GROUPS_CLAIM) or []
    if isinstance(provided, str):
        provided = [provided]
    wanted: set[str] = set()
    for name in provided:
        wanted |= set(settings.SSO_GROUP_MAP.get(str(name), ()))
    return wanted


def groups_apply(*, user: Any, claims: dict) -> tuple[list[str], list[str]]:
    """Make the user's managed groups exactly those the claims map to; ledger the login.

    Returns (added, removed)."""
    managed = managed_groups()
    wanted = groups_for(claims)
    with transaction.atomic():
        held = set(user.groups.filter(name__in=managed).values_list("name", flat=True))
        added, removed = sorted(wanted - held), sorted(held - wanted)
        if added:
            user.groups.add(*[Group.objects.get_or_create(name=name)[0] for name in added])
        if removed:
            user.groups.remove(*Group.objects.filter(name__in=removed))
        ledger.record(
            actor=user,
            action="auth.sso_login",
            subject_type="user",
            subject_id=user.get_username(),
            payload={
                "issuer": _provider_host(),
                "groups": sorted(wanted),
                "added": added,
                "removed": removed,
            },
        )
    return added, removed


class UnwindOIDCBackend(OIDCAuthenticationBackend):
    """Users are matched on the username claim (``SSO_USERNAME_CLAIM``), not on e-mail:
    an address can change or be shared, the provider's login name is the account."""

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        if not sso_enabled() or request is None or "code" not in request.GET:
            return None  # a password login, or SSO off: not ours
        return super().authenticate(request, **kwargs)

    def _username(self, claims: dict) -> str:
        return str(claims.get(settings.SSO_USERNAME_CLAIM) or "")[:150]

    def verify_claims(self, claims: dict) -> bool:
        return bool(self._username(claims))

    def describe_user_by_claims(self, claims: dict) -> str:
        return f"username {self._username(claims)}"

    def filter_users_by_claims(self, claims: dict) -> Any:
        return self.UserModel.objects.filter(username=self._username(claims))

    def create_user(self, claims: dict) -> Any:
        user = self.UserModel.objects.create_user(
            self._username(claims), email=claims.get("email") or ""
        )
        return self.update_user(user, claims)

    def update_user(self, user: Any, claims: dict) -> Any:
        if user.is_active:
            groups_apply(user=user, claims=claims)
        return user


def _provider_host() -> str:
    return urlsplit(settings.OIDC_OP_AUTHORIZATION_ENDPOINT).netloc


def _trouble(request: HttpRequest, problem: str, status: int) -> HttpResponse:
    context = {
        "problem": problem,
        "provider": _provider_host(),
        "password_login": settings.PASSWORD_LOGIN,
    }
    return render(request, "registration/sso_trouble.html", context, status=status)


def _refused(request: HttpRequest, why: str) -> HttpResponse:
    with transaction.atomic():
        ledger.record(
            actor="anonymous",
            action="auth.sso_refused",
            subject_type="user",
            reason=why,
            outcome="refused",
            payload={"issuer": _provider_host()},
        )
    return _trouble(request, "refused", 400)


class SSOStartView(OIDCAuthenticationRequestView):
    """``/oidc/authenticate/``: to the provider, once it is seen to answer."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            probe = requests.get(
                settings.OIDC_OP_JWKS_ENDPOINT, timeout=settings.SSO_PROBE_TIMEOUT_S
            )
            if probe.status_code >= 500:
                raise requests.HTTPError(f"status {probe.status_code}")
        except requests.RequestException as exc:
            logger.warning(
                "SSO: the provider %s does not answer (%s)", _provider_host(), type(exc).__name__
            )
            return _trouble(request, "unreachable", 503)
        return super().get(request)


class SSOCallbackView(OIDCAuthenticationCallbackView):
    """``/oidc/callback/``: the library's checks, with clear pages when they fail."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            return super().get(request)
        except SuspiciousOperation as exc:
            # A state not issued to this session (tampered, replayed, another browser's), a
            # nonce or signature that does not verify. The message names the check only.
            logger.warning("SSO: callback refused: %s", exc)
            return _refused(request, str(exc))
        except requests.RequestException as exc:
            # Only the exception's type: its message may quote the provider's answer.
            logger.warning(
                "SSO: the provider %s failed the token exchange (%s)",
                _provider_host(),
                type(exc).__name__,
            )
            return _trouble(request, "unreachable", 503)

    def login_failure(self) -> HttpResponse:
        if self.request.GET.get("error"):  # the provider said no (access_denied, …)
            return _trouble(self.request, "declined", 403)
        return _refused(
            self.request, "the sign-in did not complete (no session state, or an inactive account)"
        )


class LoginView(auth_views.LoginView):
    """The login page: single sign-on when configured, the password form unless switched off."""

    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict:
        return super().get_context_data(**kwargs) | {
            "sso_enabled": sso_enabled(),
            "sso_label": settings.SSO_LABEL,
            "password_login": settings.PASSWORD_LOGIN,
        }

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.PASSWORD_LOGIN:
            return _trouble(request, "no-password", 403)
        return super().post(request, *args, **kwargs)
