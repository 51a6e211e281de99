"""The status long-poll (``GET /api/reconstructions/<id>/?wait=``): it answers when the worker's notice
arrives through a real Redis, falls back to reading the row without Redis, and refuses a bad ``wait``."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from reconstruct.models import Reconstruction
from reconstruct.services import waiting
from reconstruct.services.tokens import api_token_regenerate

pytestmark = pytest.mark.django_db(transaction=True)

# Far longer than a notice takes to arrive: a wait that ends well before it was ended by the notice.
WAIT_S = 20


@pytest.fixture
def pending(alice) -> Reconstruction:
    return Reconstruction.objects.create(owner=alice, original_name="car.png", original="x/original.png")


def finish_later(reconstruction: Reconstruction, delay: float, notify: bool = True) -> threading.Thread:
    """In another thread (its own database connection), like a worker: mark the row done, then notify."""

    def finish() -> None:
        time.sleep(delay)
        try:
            Reconstruction.objects.filter(pk=reconstruction.pk).update(
                status=Reconstruction.Status.DONE, psnr=20.0, finished_at=timezone.now()
            )
            if notify:
                waiting.reconstruction_finished_notify(reconstruction.uuid)
        finally:
            connection.close()

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def get_with_wait(alice, reconstruction: Reconstruction, wait: str) -> tuple[Any, float]:
    client = Client()
    started = time.monotonic()
    response = client.get(
        f"/api/reconstructions/{reconstruction.uuid}/?wait={wait}",
        HTTP_AUTHORIZATION=f"Token {api_token_regenerate(alice)}",
    )
    return response, time.monotonic() - started


@pytest.mark.integration
def test_it_answers_as_soon_as_the_worker_says_the_job_finished(
    settings, celery_app_on_test_redis, alice, pending
) -> None:
    settings.RECONSTRUCT_MODE = "celery"
    thread = finish_later(pending, 0.5)
    response, elapsed = get_with_wait(alice, pending, str(WAIT_S))
    thread.join()
    assert response.status_code == 200
    assert response.json()["status"] == "done" and "Retry-After" not in response
    assert 0.5 <= elapsed < WAIT_S / 2


@pytest.mark.integration
def test_it_answers_when_the_time_is_up_with_the_job_still_pending(
    settings, celery_app_on_test_redis, alice, pending
) -> None:
    settings.RECONSTRUCT_MODE = "celery"
    response, elapsed = get_with_wait(alice, pending, "0.5")
    assert response.json()["status"] == "pending" and response["Retry-After"] == "1"
    assert elapsed >= 0.5


def test_it_reads_the_row_when_redis_cannot_be_reached(settings, monkeypatch, alice, pending) -> None:
    settings.RECONSTRUCT_MODE = "celery"
    monkeypatch.setattr(waiting, "_client", lambda: waiting._client_for("redis://127.0.0.1:1/0"))
    thread = finish_later(pending, 0.5, notify=False)
    response, elapsed = get_with_wait(alice, pending, str(WAIT_S))
    thread.join()
    assert response.json()["status"] == "done"
    assert elapsed < WAIT_S / 2


def test_it_does_not_wait_where_nothing_runs_elsewhere(settings, alice, pending) -> None:
    settings.RECONSTRUCT_MODE = "sync"  # Lambda: the job ran in the upload's request
    response, elapsed = get_with_wait(alice, pending, str(WAIT_S))
    assert response.json()["status"] == "pending" and elapsed < WAIT_S / 2


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "inf"])
def test_it_refuses_a_wait_that_is_not_a_number_of_seconds(alice, pending, wait: str) -> None:
    response, _ = get_with_wait(alice, pending, wait)
    assert response.status_code == 400 and "wait must be a number of seconds" in response.json()["error"]


@pytest.mark.integration
def test_waiting_requests_share_one_redis_subscription(settings, celery_app_on_test_redis, redis_url, alice) -> None:
    # Each waiting request used to open its own Redis connection; now the process's one subscription wakes them.
    import redis

    settings.RECONSTRUCT_MODE = "celery"
    rows = [
        Reconstruction.objects.create(owner=alice, original_name=f"car{i}.png", original=f"x/{i}.png") for i in range(4)
    ]
    server = redis.Redis.from_url(redis_url)
    subscribed_before = len([c for c in server.client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0))])
    token = api_token_regenerate(alice)
    results: list[tuple[Any, float]] = []

    def wait_for(row: Reconstruction) -> None:
        started = time.monotonic()
        try:
            response = Client().get(
                f"/api/reconstructions/{row.uuid}/?wait={WAIT_S}", HTTP_AUTHORIZATION=f"Token {token}"
            )
            results.append((response, time.monotonic() - started))
        finally:
            connection.close()

    waiters = [threading.Thread(target=wait_for, args=(row,)) for row in rows]
    for waiter in waiters:
        waiter.start()
    deadline = time.monotonic() + 10
    while len(waiting._listener()._waiting) < len(rows) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Only this process's connections count: Celery workers of other tests may hold subscriptions of their own.
    ours = [c for c in server.client_list() if c.get("name") == f"{waiting.LISTENER_NAME_PREFIX}{os.getpid()}"]
    assert len(ours) == 1 and int(ours[0]["psub"]) == 1, ours
    subscribers = [c for c in server.client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0))]
    assert len(subscribers) <= subscribed_before + 1, subscribers
    finishers = [finish_later(row, 0.1) for row in rows]
    for thread in [*finishers, *waiters]:
        thread.join()
    assert [response.json()["status"] for response, _ in results] == ["done"] * len(rows)
    assert all(elapsed < WAIT_S / 2 for _, elapsed in results)
    assert waiting._listener()._waiting == {}
    # The subscription has no read timeout: a quiet minute must not drop it (the shared client's is 5 s).
    assert (
        ours[0]["name"]
        and waiting._listener()._subscriber().connection_pool.connection_kwargs["socket_timeout"] is None
    )


def test_waiting_places_are_capped_per_account_and_per_process(settings, monkeypatch, alice, bob) -> None:
    """Each waiting request holds a server thread: one account holds at most RECONSTRUCT_MAX_WAITING_PER_USER of
    them and the process at most RECONSTRUCT_MAX_WAITING; past either, the request answers at once (pending,
    ``Retry-After: 1``: the client polls). Found by an attack review: 40 long-polls of one account held every
    thread, and the site stopped answering anyone."""
    settings.RECONSTRUCT_MODE = "celery"
    settings.RECONSTRUCT_MAX_WAITING, settings.RECONSTRUCT_MAX_WAITING_PER_USER = 3, 2
    release, entered = threading.Event(), threading.Semaphore(0)

    def held(reconstruction: Reconstruction, timeout: float) -> None:  # a job that takes a while
        entered.release()
        release.wait(WAIT_S)

    monkeypatch.setattr(waiting, "_wait", held)
    tokens = {user.pk: api_token_regenerate(user) for user in (alice, bob)}

    def ask(user) -> tuple[Any, float]:
        job = Reconstruction.objects.create(owner=user, original_name="car.png", original="x/original.png")
        started = time.monotonic()
        response = Client().get(
            f"/api/reconstructions/{job.uuid}/?wait={WAIT_S}", HTTP_AUTHORIZATION=f"Token {tokens[user.pk]}"
        )
        return response, time.monotonic() - started

    answers: list[Any] = []

    def hold(user) -> threading.Thread:
        def run() -> None:
            try:
                answers.append(ask(user)[0])
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        assert entered.acquire(timeout=WAIT_S)
        return thread

    holders = [hold(alice), hold(alice)]
    refused, elapsed = ask(alice)  # her third: at once
    assert refused.status_code == 200 and refused.json()["status"] == "pending" and refused["Retry-After"] == "1"
    assert elapsed < WAIT_S / 4
    holders.append(hold(bob))  # another account may still wait...
    full, elapsed = ask(bob)  # ...until the process's places are taken
    assert full.json()["status"] == "pending" and elapsed < WAIT_S / 4
    release.set()
    for thread in holders:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert waiting._waiting_total == 0 and waiting._waiting_by_owner == {}


@pytest.mark.integration
def test_a_wait_ends_when_the_job_counts_as_stuck(settings, celery_app_on_test_redis, alice) -> None:
    """A job whose worker died never finishes by waiting: the long-poll answers the moment it counts as stuck
    (RECONSTRUCT_STUCK_AFTER), with "stuck": true, instead of waiting out its seconds (the page then offers
    "Queue it again": test_browser.py)."""
    settings.RECONSTRUCT_MODE = "celery"
    settings.RECONSTRUCT_STUCK_AFTER = 60
    started = timezone.now() - timedelta(seconds=59)
    job = Reconstruction.objects.create(
        owner=alice, original_name="car.png", original="x/original.png", status="running", started_at=started
    )
    response, elapsed = get_with_wait(alice, job, str(WAIT_S))
    assert response.json()["stuck"] is True and response.json()["status"] == "running"
    assert 0.5 <= elapsed < WAIT_S / 4
