"""Celery tasks: thin adapters that take a primary key and call one service."""

from __future__ import annotations

from celery import Task
from django.conf import settings

from carsite.celery import app
from reconstruct.services.reconstructions import reconstruction_run
from reconstruct.services.recovery import reconstruction_sweep
from reconstruct.services.uploads import upload_records_prune
from reconstruct.services.waiting import reconstruction_finished_notify
from reconstruct.storage import StorageUnavailable


@app.task(bind=True, name="reconstruct.tasks.reconstruction_run_task", max_retries=None)
def reconstruction_run_task(self: Task, reconstruction_id: int) -> None:
    """Run reconstruction ``reconstruction_id`` (a primary key) on the ``reconstruct`` queue.

    While the storage does not answer it is tried again RECONSTRUCT_STORAGE_RETRIES times, after
    RECONSTRUCT_STORAGE_RETRY_DELAY s and three times longer each time; the last try fails the row with the reason.
    """
    retries = self.request.retries
    try:
        reconstruction = reconstruction_run(
            reconstruction_id, storage_retry=retries < settings.RECONSTRUCT_STORAGE_RETRIES
        )
    except StorageUnavailable as error:
        raise self.retry(exc=error, countdown=settings.RECONSTRUCT_STORAGE_RETRY_DELAY * 3**retries) from error
    if reconstruction is not None and reconstruction.is_finished:
        reconstruction_finished_notify(reconstruction.uuid)


@app.task(name="reconstruct.tasks.reconstruction_sweep_task")
def reconstruction_sweep_task() -> dict[str, list[int]]:
    """Queue again (or fail) the reconstructions nobody is running, and forget uploads older than the hourly
    limit's hour; Celery beat sends it every RECONSTRUCT_SWEEP_INTERVAL s."""
    report = reconstruction_sweep()
    upload_records_prune()
    return {"requeued": report.requeued, "failed": report.failed}


def reconstruction_sweep_event(event: dict, context: object) -> dict[str, list[int]]:
    """The sweep on AWS Lambda, where no Celery beat runs: zappa calls this on a schedule (zappa_settings.json
    "events"). In sync mode the jobs it finds run again right here (a request killed by Lambda's time limit
    leaves its row running).

    Outside any request, so Django's per-request rule for database connections is applied here, as around a
    Celery task (carsite/celery.py): a kept connection that the server closed while the container was frozen is
    replaced instead of failing this sweep and every later one in the container."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        return reconstruction_sweep_task()
    finally:
        close_old_connections()
