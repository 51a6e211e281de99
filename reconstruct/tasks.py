"""Celery tasks: thin adapters that take a primary key and call one service."""

from __future__ import annotations

from celery import shared_task

from reconstruct import services


@shared_task(name="reconstruct.tasks.reconstruction_run_task")
def reconstruction_run_task(reconstruction_id: int) -> None:
    services.reconstruction_run(reconstruction_id)
