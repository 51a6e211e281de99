"""API tokens: one per user, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

from django.utils import timezone

from reconstruct.compiled import CompiledQuery
from reconstruct.models import ApiToken

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

API_TOKEN_PREFIX = "cs_"


def _token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_regenerate(user: AbstractBaseUser) -> str:
    """Create or replace the user's API token; returns the key, which is stored only as a hash."""
    key = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.update_or_create(
        user=user, defaults={"key_hash": _token_hash(key), "prefix": key[:8], "last_used_at": None}
    )
    return key


def api_token_revoke(user: AbstractBaseUser) -> None:
    """Delete the user's API token: requests that use it are refused from now on."""
    ApiToken.objects.filter(user=user).delete()


# Every API request makes this lookup: compiled once per connection (reconstruct/compiled.py).
_TOKEN_WITH_USER = CompiledQuery(
    lambda key_hash: ApiToken.objects.select_related("user").filter(key_hash=key_hash)[:1],
    [(ApiToken._meta.get_field("key_hash"), "0" * 64)],
)


def api_token_authenticate(key: str) -> AbstractBaseUser | None:
    """The active user owning this key, or None."""
    token = _TOKEN_WITH_USER.first(_token_hash(key.strip()))
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    # One write per minute at most, not one per request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
