"""Waiting for a reconstruction to finish: the status long-poll (``?wait=``) and the worker's notice.

A worker that finishes a job publishes the reconstruction's public id on a Redis channel
(``reconstruction_finished_notify``); a request waiting for that job (``reconstruction_wait``) is subscribed
to the channel and answers the moment the notice arrives, instead of the client polling every second.
Without Redis (or when it fails) the wait falls back to reading the row every ``FALLBACK_POLL_S``. The redis
client is imported only in celery mode: the Lambda bundle (sync mode) has no Redis and no redis package.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings

from reconstruct.models import Reconstruction

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "carsite:reconstruction-finished:"
MAX_WAIT_S = 25.0  # under the usual 30 s proxy and client read timeouts
FALLBACK_POLL_S = 0.25


def _client() -> redis.Redis:
    """A client of the Redis the jobs are queued in (the Celery app's broker)."""
    from carsite.celery import app

    return _client_for(app.conf.broker_url)


@lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    import redis

    # One connection pool per process; short timeouts so a dead Redis costs a waiting request at most ~2 s.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def _channel(public_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{public_id}"


def reconstruction_finished_notify(public_id: uuid.UUID | str) -> None:
    """Tell the requests waiting for reconstruction ``public_id`` that it is finished (done or failed).

    Best effort: a lost notice costs a waiting client at most its ``wait``, after which it reads the row.
    """
    if settings.RECONSTRUCT_MODE != "celery":
        return
    import redis

    try:
        _client().publish(_channel(public_id), "finished")
    except redis.RedisError as error:
        logger.warning("could not publish the end of reconstruction %s: %s", public_id, error)


def _unfinished(pk: int) -> bool:
    return Reconstruction.objects.filter(
        pk=pk, status__in=[Reconstruction.Status.PENDING, Reconstruction.Status.RUNNING]
    ).exists()


def reconstruction_wait(reconstruction: Reconstruction, timeout: float) -> None:
    """Block until ``reconstruction`` is finished or ``timeout`` seconds (at most ``MAX_WAIT_S``) have passed.

    Returns nothing: the caller reads the row again. Subscribes before it checks the row, so a job that
    finishes in between is not missed.
    """
    timeout = min(max(timeout, 0.0), MAX_WAIT_S)
    if reconstruction.is_finished or timeout <= 0 or settings.RECONSTRUCT_MODE != "celery":
        return
    import redis

    deadline = time.monotonic() + timeout
    try:
        pubsub = _client().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(_channel(reconstruction.uuid))
            if not _unfinished(reconstruction.pk):
                return
            while (left := deadline - time.monotonic()) > 0:
                if pubsub.get_message(timeout=left) is not None:
                    return
        finally:
            pubsub.close()
    except redis.RedisError as error:
        logger.warning("waiting through Redis failed (%s); reading the row instead", error)
        while time.monotonic() < deadline and _unfinished(reconstruction.pk):
            time.sleep(FALLBACK_POLL_S)
