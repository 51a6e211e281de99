"""Waiting for a reconstruction to finish: the status long-poll (``?wait=``) and the worker's notice.

A worker that finishes a job publishes the reconstruction's public id on a Redis channel
(``reconstruction_finished_notify``); a request waiting for that job (``reconstruction_wait``) answers the
moment the notice arrives, instead of the client polling every second. Each web process keeps ONE
subscription (a pattern over every job's channel, held by a daemon thread: ``_FinishedListener``) and wakes
the waiting requests through in-process events, so a waiting request costs no Redis connection of its own
(one per request cost a connect, a SUBSCRIBE and a disconnect: measured in ``make loadtest``).
Without Redis (or when it fails) the wait falls back to reading the row every ``FALLBACK_POLL_S``. The redis
client is imported only in celery mode: the Lambda bundle (sync mode) has no Redis and no redis package.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from reconstruct.compiled import CompiledQuery
from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_stuck_at

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "carsite:reconstruction-finished:"
MAX_WAIT_S = 25.0  # under the usual 30 s proxy and client read timeouts
FALLBACK_POLL_S = 0.25
# The subscription's connection is named this plus the process id (Redis's CLIENT LIST shows it).
LISTENER_NAME_PREFIX = "carsite-waiting-"


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


_UNFINISHED = (Reconstruction.Status.PENDING, Reconstruction.Status.RUNNING)
# Asked once by every waiting request: compiled once per connection (reconstruct/compiled.py).
_UNFINISHED_ROW = CompiledQuery(
    lambda pk, *statuses: Reconstruction.objects.filter(pk=pk).filter(status__in=statuses).only("id").order_by()[:1],
    [(Reconstruction._meta.pk, 0), *((Reconstruction._meta.get_field("status"), status) for status in _UNFINISHED)],
)


def _unfinished(pk: int) -> bool:
    return _UNFINISHED_ROW.first(pk, *_UNFINISHED) is not None


class _FinishedListener:
    """One process's subscription to every job's channel (``CHANNEL_PREFIX*``), in a daemon thread that wakes
    the requests waiting for a job (``wait_for``). Started on first use in each process (after a fork too);
    when its connection fails it wakes every waiting request (they read the row) and connects again."""

    RECONNECT_S = 1.0

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._failing = False

    def _start_locked(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._subscribed.clear()
        self._thread = threading.Thread(target=self._listen, name="carsite-finished-listener", daemon=True)
        self._thread.start()

    def _subscriber(self) -> redis.Redis:
        """A client of the same server for the subscription alone: no read timeout (a subscription is quiet
        for as long as no job finishes; the shared client's 5 s would drop it every 5 idle seconds), TCP
        keep-alive, and a name that says whose it is in Redis's CLIENT LIST."""
        import redis

        pool = self._client.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "socket_keepalive": True}
        kwargs["client_name"] = f"{LISTENER_NAME_PREFIX}{os.getpid()}"
        return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))

    def _listen(self) -> None:
        import redis

        while True:
            try:
                pubsub = self._subscriber().pubsub()
                try:
                    pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                    for message in pubsub.listen():
                        if message["type"] == "psubscribe":
                            self._failing = False
                            self._subscribed.set()
                        elif message["type"] == "pmessage":
                            channel = message["channel"]
                            channel = channel.decode() if isinstance(channel, bytes) else channel
                            self._wake(channel.removeprefix(CHANNEL_PREFIX))
                finally:
                    pubsub.close()
            except (redis.RedisError, OSError) as error:
                if not self._failing:
                    logger.warning("the job-finished subscription failed (%s); waiting requests read the row", error)
            self._subscribed.clear()
            self._wake_all()
            with self._lock:
                self._failing = True
                if not self._waiting:  # nobody waits: stop; the next waiting request starts it again
                    self._thread = None
                    return
            time.sleep(self.RECONNECT_S)

    def _wake(self, public_id: str) -> None:
        with self._lock:
            events = list(self._waiting.get(public_id, ()))
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for events in self._waiting.values() for event in events]
        for event in events:
            event.set()

    def register(self, public_id: str) -> threading.Event | None:
        """An event set when job ``public_id`` finishes (or the subscription fails), or None when there is no
        working subscription (Redis failed last time, or it is not up within 2 s): then read the row."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(public_id, set()).add(event)
            self._start_locked()
            failing = self._failing
        if failing or not self._subscribed.wait(timeout=2.0):
            self.unregister(public_id, event)
            return None
        return event

    def unregister(self, public_id: str, event: threading.Event) -> None:
        with self._lock:
            events = self._waiting.get(public_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[public_id]


_listeners: dict[tuple, _FinishedListener] = {}
_listeners_lock = threading.Lock()


def _listener() -> _FinishedListener:
    """The process's subscription to the jobs' Redis (one per server, however many clients point at it)."""
    client = _client()
    kwargs = client.connection_pool.connection_kwargs
    server = (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db"))
    with _listeners_lock:
        listener = _listeners.get(server)
        if listener is None:
            listener = _listeners[server] = _FinishedListener(client)
        return listener


_slots_lock = threading.Lock()
_waiting_total = 0
_waiting_by_owner: dict[int, int] = {}


@contextmanager
def _waiting_slot(owner_id: int) -> Iterator[bool]:
    """Whether a request of ``owner_id`` may wait now, holding its place while it does: at most
    RECONSTRUCT_MAX_WAITING requests of this process wait at once, and RECONSTRUCT_MAX_WAITING_PER_USER of one
    account. Each waiting request holds one of the web server's threads (Granian: 32 a process under
    ``make run``) for up to ``MAX_WAIT_S``: without a cap, one account's 40 long-polls held every thread and the
    site stopped answering anyone (an attack review, stop 27)."""
    global _waiting_total
    with _slots_lock:
        allowed = (
            _waiting_total < settings.RECONSTRUCT_MAX_WAITING
            and _waiting_by_owner.get(owner_id, 0) < settings.RECONSTRUCT_MAX_WAITING_PER_USER
        )
        if allowed:
            _waiting_total += 1
            _waiting_by_owner[owner_id] = _waiting_by_owner.get(owner_id, 0) + 1
    try:
        yield allowed
    finally:
        if allowed:
            with _slots_lock:
                _waiting_total -= 1
                left = _waiting_by_owner[owner_id] - 1
                if left:
                    _waiting_by_owner[owner_id] = left
                else:
                    del _waiting_by_owner[owner_id]


def reconstruction_wait(reconstruction: Reconstruction, timeout: float) -> None:
    """Block until ``reconstruction`` is finished or ``timeout`` seconds (at most ``MAX_WAIT_S``) have passed.

    Returns nothing: the caller reads the row again. Registers with the process's subscription before it
    checks the row, so a job that finishes in between is not missed. Returns at once when this process already
    has RECONSTRUCT_MAX_WAITING waiting requests, or the owner RECONSTRUCT_MAX_WAITING_PER_USER
    (``_waiting_slot``): the client then polls, as the status's ``Retry-After`` says.
    """
    timeout = min(max(timeout, 0.0), MAX_WAIT_S)
    if reconstruction.is_finished or timeout <= 0 or settings.RECONSTRUCT_MODE != "celery":
        return
    # Never past the moment the job counts as stuck (its worker died): the answer then says so ("stuck": true) and
    # the result page offers "Queue it again" at once, where it used to wait out the whole wait first.
    timeout = min(timeout, (reconstruction_stuck_at(reconstruction) - timezone.now()).total_seconds())
    if timeout <= 0:
        return
    with _waiting_slot(reconstruction.owner_id) as allowed:
        if allowed:
            _wait(reconstruction, timeout)


def _wait(reconstruction: Reconstruction, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    public_id = str(reconstruction.uuid)
    listener = _listener()
    event = listener.register(public_id)
    if event is None:
        logger.warning("waiting through Redis failed (no subscription); reading the row instead")
        while time.monotonic() < deadline and _unfinished(reconstruction.pk):
            time.sleep(FALLBACK_POLL_S)
        return
    try:
        if _unfinished(reconstruction.pk):
            event.wait(max(deadline - time.monotonic(), 0.0))
    finally:
        listener.unregister(public_id, event)


def reconstruction_wait_new(reconstruction: Reconstruction, timeout: float) -> None:
    """``reconstruction_wait`` for a reconstruction just created in this request (the upload form, ``POST
    ?wait=``). Returns at once when nothing can finish it meanwhile, where waiting could only run out the clock:
    inside a transaction (``reconstruction_create`` queues the job when it commits), or when the broker did not
    take the job (Redis down: ``queued_at`` still None on a pending row; the sweep queues it later)."""
    if transaction.get_connection().in_atomic_block:
        return
    if reconstruction.is_unqueued:
        return
    reconstruction_wait(reconstruction, timeout)
