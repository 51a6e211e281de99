"""python manage.py register_default_model: put ml/weights/default in the registry (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from reconstruct.registry.services import model_version_ensure_active, model_version_register_shipped


class Command(BaseCommand):
    help = "Register the shipped model (ml/weights/default) and activate it if no model is active."

    def handle(self, *args: Any, **options: Any) -> None:
        version = model_version_register_shipped()
        active = model_version_ensure_active()
        self.stdout.write(f"Shipped model: {version.name}. Active model: {active.name}.")
