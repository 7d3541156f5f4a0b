"""The Ed25519 key that signs checkpoints and export manifests.

``LEDGER_SIGNING_KEY`` is the base64 of the 32 raw private bytes. Without it, a DEBUG
process generates one into ``var/ledger-signing.key`` (mode 600) and every process of the
demo reuses it; with DEBUG off, signing refuses loudly (``ImproperlyConfigured``) rather than
sign with a key nobody can verify later.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_cache: dict[tuple, Ed25519PrivateKey] = {}


def generate_key_b64() -> str:
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def _from_b64(value: str, where: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"{where} is not the base64 of a 32-byte Ed25519 private key: {exc}"
        ) from exc


def _development_key(path: Path) -> Ed25519PrivateKey:
    """Read ``path``, or create it; O_EXCL so that two processes starting together agree."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key_b64() + "\n")
    return _from_b64(path.read_text(), str(path))


def private_key() -> Ed25519PrivateKey:
    configured = getattr(settings, "LEDGER_SIGNING_KEY", "")
    path = Path(settings.LEDGER_SIGNING_KEY_FILE)
    cache_key = (configured, settings.DEBUG, str(path))
    if cache_key not in _cache:
        if configured:
            _cache[cache_key] = _from_b64(configured, "LEDGER_SIGNING_KEY")
        elif settings.DEBUG:
            _cache[cache_key] = _development_key(path)
        else:
            raise ImproperlyConfigured(
                "LEDGER_SIGNING_KEY is not set and DEBUG is off: refusing to sign ledger "
                "checkpoints and exports. Set it to the base64 of a 32-byte Ed25519 private "
                "key (`manage.py ledger_keygen` prints one)."
            )
    return _cache[cache_key]


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey | None = None) -> str:
    return base64.b64encode(public_bytes((key or private_key()).public_key())).decode()


def public_key_pem(public_b64: str) -> str:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(public_b64: str) -> str:
    """A short fingerprint to compare by eye: the first 16 hex digits of SHA-256(raw key)."""
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def sign(data: bytes, key: Ed25519PrivateKey | None = None) -> str:
    return base64.b64encode((key or private_key()).sign(data)).decode()


def is_valid_signature(public_b64: str, data: bytes, signature_b64: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def trusted_public_keys() -> set[str]:
    """The current key's public half (when a key is available) and the earlier ones listed
    in ``LEDGER_TRUSTED_PUBLIC_KEYS``."""
    trusted = set(getattr(settings, "LEDGER_TRUSTED_PUBLIC_KEYS", []))
    with contextlib.suppress(ImproperlyConfigured):
        trusted.add(public_key_b64())
    return trusted
