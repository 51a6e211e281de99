"""Celery tasks of curation, routed to the ``training`` queue (carsite/settings.py CELERY_TASK_ROUTES).

Only a worker started with `-Q training` and the training extras (torch) consumes them:
`celery -A carsite worker -Q training --concurrency 1`.
"""

from __future__ import annotations

from django.conf import settings

from carsite.celery import app


# Training outlasts the site-wide time limits meant for reconstructions, so it sets its own; a
# redelivery after Redis's visibility timeout is harmless (the run row tells a live run from a lost one).
@app.task(
    name="reconstruct.curation.tasks.training_run_execute_task",
    soft_time_limit=settings.CURATION_TRAINING_TIME_LIMIT,
    time_limit=settings.CURATION_TRAINING_TIME_LIMIT + 120,
)
def training_run_execute_task(run_id: int) -> None:
    # Imported here: the runner imports the training code, which only the training worker runs.
    """Execute training run ``run_id`` (a primary key) in the training worker."""
    from reconstruct.curation.runner import training_run_execute

    training_run_execute(run_id)
