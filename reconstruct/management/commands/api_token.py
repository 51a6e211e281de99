"""python manage.py api_token USERNAME: a new API token for an account, printed once (for scripts and curl)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from reconstruct.services.tokens import api_token_regenerate


class Command(BaseCommand):
    help = (
        "Print a new API token for USERNAME (Authorization: Token <key>), as 'Generate a new token' on /account/ "
        "does: the account's previous token stops working."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"], is_active=True).first()
        if user is None:
            raise CommandError(f"No active account named {options['username']!r}.")
        self.stdout.write(api_token_regenerate(user))
