"""Accounts: what happens around a sign-up that Django's auth does not do by itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


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
