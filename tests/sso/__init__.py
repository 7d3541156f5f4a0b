"""Single sign-on test support: the real provider (provider/) and its settings."""

from __future__ import annotations

CLIENT_ID, CLIENT_SECRET = "unwind", "unwind-test-secret"


def configure(settings, issuer: str, group_map: dict[str, list[str]]) -> None:
    """Point Unwind's SSO at a provider with oidc-provider's endpoint paths."""
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{issuer}/auth"
    settings.OIDC_OP_TOKEN_ENDPOINT = f"{issuer}/token"
    settings.OIDC_OP_USER_ENDPOINT = f"{issuer}/me"
    settings.OIDC_OP_JWKS_ENDPOINT = f"{issuer}/jwks"
    settings.SSO_GROUP_MAP = group_map
