"""Accounts: why a password-reset link stopped working, so the page can say what really happened."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.tokens import PasswordResetTokenGenerator, default_token_generator
from django.utils import timezone
from django.utils.http import base36_to_int
from django.utils.timesince import timesince

# Django's reset tokens count seconds from this moment, in the server's local time (tokens.py: _num_seconds).
_TOKEN_EPOCH = datetime(2001, 1, 1)


def password_reset_link_problem(
    user: AbstractBaseUser | None, token: str, generator: PasswordResetTokenGenerator = default_token_generator
) -> str:
    """Why Django refused the password-reset link for ``user`` with ``token`` ("<timestamp>-<hash>"), in words.

    A token hashes the user's id, password hash, last login time, email and its own creation time
    (django/contrib/auth/tokens.py), so it stops working when it is older than PASSWORD_RESET_TIMEOUT
    (seconds), when the user logs in after it was made, or when the password or email changes.
    """
    timestamp_b36, _, signature = (token or "").partition("-")
    try:
        made = _TOKEN_EPOCH + timedelta(seconds=base36_to_int(timestamp_b36))
    except ValueError:
        made = None
    if user is None or made is None or not signature:
        return "The link is incomplete: part of it was probably cut off when it was copied from the email."
    now = generator._now()  # naive local time, as the token's own timestamp
    if (now - made).total_seconds() > settings.PASSWORD_RESET_TIMEOUT:
        valid_for = timesince(now - timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT), now)
        sent = timesince(made, now)
        return f"It expired: a link works for {valid_for} after it is sent, and this one was sent {sent} ago."
    last_login = user.last_login and timezone.make_naive(user.last_login)
    if last_login is not None and last_login > made:
        return (
            f"Your account was logged in after this link was sent (last login {timesince(last_login, now)} ago), "
            "and logging in cancels the reset links sent before, so that an old email cannot be used to take "
            "over the account."
        )
    return (
        "The account changed after this link was sent: its password was changed (perhaps with this very link) "
        "or its email address was."
    )
