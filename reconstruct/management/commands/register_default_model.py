"""python manage.py register_default_model: put ml/weights/default in the registry (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from reconstruct import services


class Command(BaseCommand):
    help = "Register the shipped model (ml/weights/default) and activate it if no model is active."

    def handle(self, *args: Any, **options: Any) -> None:
        version = services.model_version_register_default()
        active = services.model_version_get_active()
        self.stdout.write(f"Shipped model: {version.name}. Active model: {active.name}.")
