"""Throttled guessing, on django-axes: logins (the site's and the admin's), API tokens and password resets.

django-axes counts failed attempts in the database (every web process and Lambda instance shares them) and
refuses further tries (429, ``Retry-After``) once AXES_FAILURE_LIMIT failed within AXES_COOLOFF_TIME, counted
per client address and, where the attempt names one, per account. Its authentication backend covers every
password login; this module adds the attempts that are not password logins (a wrong API token, a reset link
that does not verify, a reset request) and says how a refusal looks (JSON for the API, a page otherwise).
"""

from __future__ import annotations

from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off, get_lockout_response
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def client_address(request: HttpRequest) -> str | None:
    """The client's IP address (AXES_CLIENT_IP_CALLABLE): REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the
    address the outermost of them saw, counted from the right of X-Forwarded-For (what a client sends itself
    stands to the left, and is never trusted)."""
    from django.conf import settings

    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if proxies and len(forwarded) >= proxies:
        return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR")


def lockout_parameters(request_or_attempt: Any, credentials: dict[str, Any] | None) -> list[str]:
    """What failures are counted by (AXES_LOCKOUT_PARAMETERS): the client address, and the account when the
    attempt names one. A wrong API token names none, so it never locks out an account (or every anonymous try)."""
    username = (credentials or {}).get("username") or getattr(request_or_attempt, "username", None)
    return ["ip_address", "username"] if username else ["ip_address"]


def _retry_after(request: HttpRequest) -> int:
    cool_off = get_cool_off(request)
    return max(1, int(cool_off.total_seconds())) if cool_off else 3600


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """429 with ``Retry-After`` (s): JSON ``{"error", "code": "throttled", "retry_after"}`` for the API, a page
    otherwise (AXES_LOCKOUT_CALLABLE)."""
    from django.conf import settings

    from reconstruct.http import json_error, wants_json  # reconstruct.http imports this module

    seconds = _retry_after(request)
    minutes = -(-seconds // 60)
    if wants_json(request):
        response: HttpResponse = json_error(
            f"Too many failed attempts from your address; try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            429,
            code="throttled",
            retry_after=seconds,
        )
    else:
        context = {"failure_limit": settings.AXES_FAILURE_LIMIT, "minutes": minutes, "what": "password resets"}
        response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response


def throttle_refusal(request: HttpRequest, username: str | None = None) -> HttpResponse | None:
    """The 429 response when ``request`` (and the account ``username``, if given) may not try now, else None."""
    credentials = {"username": username} if username else None
    if AxesProxyHandler.is_allowed(request, credentials):
        return None
    return get_lockout_response(request, None, credentials)


def throttle_reset_account(username: str) -> int:
    """Forget the failed attempts counted against the account ``username`` (from every address), and only those:
    called on its successful login (AXES_RESET_ON_SUCCESS is off). django-axes' own reset deletes every attempt
    that matches the login's address *or* account, so a guesser who logged in to an account of their own after
    each few guesses at someone else's wiped those guesses too and could guess forever. Returns the number of
    attempt records deleted."""
    from axes.models import AccessAttempt

    deleted, _ = AccessAttempt.objects.filter(username=username).delete()
    return deleted


def throttle_failure(request: HttpRequest, username: str | None = None) -> None:
    """Count one failed attempt of ``request``'s client (and against ``username``, if given)."""
    user_login_failed.send(sender=__name__, credentials={"username": username}, request=request)
