"""Celery tasks: thin adapters that take a primary key and call one service."""

from __future__ import annotations

from celery import shared_task

from reconstruct.services.reconstructions import reconstruction_run
from reconstruct.services.waiting import reconstruction_finished_notify


@shared_task(name="reconstruct.tasks.reconstruction_run_task")
def reconstruction_run_task(reconstruction_id: int) -> None:
    """Run reconstruction ``reconstruction_id`` (a primary key) on the ``reconstruct`` queue."""
    reconstruction = reconstruction_run(reconstruction_id)
    if reconstruction is not None and reconstruction.is_finished:
        reconstruction_finished_notify(reconstruction.uuid)
