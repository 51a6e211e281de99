"""ASGI entry point (for servers such as uvicorn; the site itself is synchronous)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "carsite.settings")

application = get_asgi_application()
