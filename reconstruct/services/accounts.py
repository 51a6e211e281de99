"""Accounts: why a password-reset link stopped working, so the page can say what really happened; the owner of an
address told of a new account that uses it, and how many new accounts one address may be given in an hour."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.tokens import PasswordResetTokenGenerator, default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
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
        return f"It expired: a link works for {valid_for} after it is sent, and this one was sent {_ago(made, now)}."
    last_login = user.last_login and timezone.make_naive(user.last_login)
    if last_login is not None and last_login > made:
        return (
            f"Your account was logged in after this link was sent (last login {_ago(last_login, now)}), "
            "and logging in cancels the reset links sent before, so that an old email cannot be used to take "
            "over the account."
        )
    return (
        "The account changed after this link was sent: its password was changed (perhaps with this very link) "
        "or its email address was."
    )


def _ago(then: datetime, now: datetime) -> str:
    """ "3 minutes ago", or "less than a minute ago" where timesince would say "0 minutes"."""
    if (now - then).total_seconds() < 60:
        return "less than a minute ago"
    return f"{timesince(then, now)} ago"


SIGNUPS_PER_EMAIL_PER_HOUR = 5


class SignupRateLimited(ValidationError):
    """Too many accounts gave this email address in the last hour; ``retry_after``: seconds until one more may."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, code="rate_limited")
        self.retry_after = retry_after


def account_signup_rate_check(email: str) -> None:
    """Raise SignupRateLimited when SIGNUPS_PER_EMAIL_PER_HOUR accounts or more gave ``email`` (any case) in the
    last hour. Each new account may email the address (``account_signup_notify``), so this bounds what anyone can
    send to one inbox. Counted from the accounts themselves (``date_joined``): it holds across processes, and it
    counts nothing against the client's address, which django-axes' login throttle reads (a sign-up counted there
    would lock a shared address out of logging in)."""
    now = timezone.now()
    recent = get_user_model().objects.filter(email__iexact=email.strip(), date_joined__gte=now - timedelta(hours=1))
    joined = list(recent.order_by("-date_joined").values_list("date_joined", flat=True)[:SIGNUPS_PER_EMAIL_PER_HOUR])
    if len(joined) >= SIGNUPS_PER_EMAIL_PER_HOUR:
        retry_after = max(1, int((joined[-1] + timedelta(hours=1) - now).total_seconds()) + 1)
        raise SignupRateLimited(
            "Too many accounts were made with this email address in the last hour; please try again later.",
            retry_after,
        )


def account_signup_notify(user: AbstractBaseUser) -> int:
    """Tell the address of a new account when other accounts already use it; returns how many emails were sent.

    Sign-up never says whether an address has an account (that would let anyone test addresses): it accepts the
    address either way, and the owner of the address learns of the new account here instead. A password reset
    for the address then offers every account that uses it (Django's PasswordResetForm).
    """
    email = user.email
    others = get_user_model().objects.filter(email__iexact=email, is_active=True).exclude(pk=user.pk)
    names = sorted(others.values_list("username", flat=True))
    if not names:
        return 0
    send_mail(
        f"A new {settings.SITE_NAME} account uses your email address",
        f"Someone just created the {settings.SITE_NAME} account “{user.get_username()}” with this email address, "
        f"which your account{'s' if len(names) > 1 else ''} {', '.join(f'“{n}”' for n in names)} already use"
        f"{'' if len(names) > 1 else 's'}.\n\nIf that was you, there is nothing to do. If it was not, your own "
        "account is unchanged; nobody can reach it without your password.\n",
        None,
        [email],
    )
    return 1
