"""Celery tasks: thin adapters that take a primary key and call one service."""

from __future__ import annotations

from celery import shared_task

from reconstruct.services.reconstructions import reconstruction_run
from reconstruct.services.recovery import reconstruction_sweep


@shared_task(name="reconstruct.tasks.reconstruction_run_task")
def reconstruction_run_task(reconstruction_id: int) -> None:
    """Run reconstruction ``reconstruction_id`` (a primary key) on the ``reconstruct`` queue."""
    reconstruction_run(reconstruction_id)


@shared_task(name="reconstruct.tasks.reconstruction_sweep_task")
def reconstruction_sweep_task() -> dict[str, list[int]]:
    """Queue again (or fail) the reconstructions nobody is running; Celery beat sends it every minute."""
    report = reconstruction_sweep()
    return {"requeued": report.requeued, "failed": report.failed}
