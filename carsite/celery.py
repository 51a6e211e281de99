"""The Celery app. Workers: `celery -A carsite worker -Q reconstruct` (see reconstruct/management/commands/runlocal.py).

Configuration lives in carsite/settings.py as CELERY_* settings (broker, acks_late, time limits, routes).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "carsite.settings")

app = Celery("carsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def close_old_database_connections(task: Task | None = None, **kwargs: Any) -> None:
    """Before and after each task, what Django does around each request (``close_old_connections``): close a
    connection older than DATABASE_CONN_MAX_AGE, broken, or left inside a transaction; keep a healthy one.
    Replaces the fixup's unconditional close (CELERY_DB_REUSE_MAX in carsite/settings.py). Not for a task run
    eagerly, inside the caller's own transaction."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
