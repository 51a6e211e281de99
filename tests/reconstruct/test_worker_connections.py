"""A Celery worker process keeps its database connection from one job to the next when DATABASE_CONN_MAX_AGE
allows (as `make run` sets), and closes it after each job when it does not (the default, 0), like Django does
around requests: Celery's Django fixup and carsite/celery.py's handler, run as a worker runs them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from celery.fixups.django import DjangoWorkerFixup
from celery.signals import task_postrun, task_prerun
from django.db import connection

from carsite.celery import app
from reconstruct.tasks import reconstruction_run_task

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conn_max_age() -> Iterator[Callable[[int], None]]:
    original = connection.settings_dict["CONN_MAX_AGE"]

    def set_to(seconds: int) -> None:
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = seconds

    yield set_to
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = original


def run_job(fixup: DjangoWorkerFixup) -> None:
    """What a worker process does around one task, the task being a query."""
    task = reconstruction_run_task
    fixup.on_task_prerun(sender=task)
    task_prerun.send(sender=task, task_id="t", task=task, args=(), kwargs={})
    connection.ensure_connection()
    fixup.on_task_postrun(sender=task)
    task_postrun.send(sender=task, task_id="t", task=task, args=(), kwargs={}, retval=None, state="SUCCESS")


def test_a_worker_keeps_a_healthy_connection_between_jobs(conn_max_age) -> None:
    conn_max_age(600)
    fixup = DjangoWorkerFixup(app)
    assert fixup.db_reuse_max  # else the fixup closes every connection around every task
    run_job(fixup)
    kept = connection.connection
    assert kept is not None
    run_job(fixup)
    run_job(fixup)
    assert connection.connection is kept


def test_a_worker_closes_its_connection_after_each_job_by_default(conn_max_age) -> None:
    conn_max_age(0)
    fixup = DjangoWorkerFixup(app)
    run_job(fixup)
    assert connection.connection is None
