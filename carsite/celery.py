"""The Celery app. Workers: `celery -A carsite worker -Q reconstruct` (see reconstruct/management/commands/runlocal.py).

Configuration lives in carsite/settings.py as CELERY_* settings (broker, acks_late, time limits, routes).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "carsite.settings")

app = Celery("carsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
