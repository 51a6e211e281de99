"""API token authentication (`Authorization: Token <key>`), shared by the JSON API and the file view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest

from reconstruct.services.tokens import api_token_authenticate

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

SCHEMES = ("token", "bearer")


class TokenError(Exception):
    """A bad Authorization header; ``str(error)`` tells the caller what to do."""


def authenticate_token(request: HttpRequest) -> AbstractBaseUser | None:
    """The user named by the request's Authorization header, or None when it has none."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() not in SCHEMES or not key.strip():
        raise TokenError("Malformed Authorization header: send 'Authorization: Token <your API token>'.")
    user = api_token_authenticate(key)
    if user is None:
        raise TokenError(
            "This API token is not valid (it may have been regenerated). Get a new one on your account page."
        )
    return user
