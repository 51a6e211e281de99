"""Celery tasks: thin adapters that take a primary key and call one service."""

from __future__ import annotations

from celery import shared_task

from reconstruct.services.reconstructions import reconstruction_run


@shared_task(name="reconstruct.tasks.reconstruction_run_task")
def reconstruction_run_task(reconstruction_id: int) -> None:
    """Run reconstruction ``reconstruction_id`` (a primary key) on the ``reconstruct`` queue."""
    reconstruction_run(reconstruction_id)
