"""kombu's Redis transport with one redis-py client per channel, instead of a new one for each command.

kombu's Redis channel makes a new ``redis.Redis`` object (on its shared connection pool) for every publish,
acknowledgement and unacked-record write (``Channel._create_client``, through ``conn_or_acquire``). Making one
fills its table of reply callbacks, about 170 entries: 0.17 ms of CPU, a quarter of a web process's publish
(docs/performance.md, stop 29). A ``redis.Redis`` object holds no connection of its own (it borrows one from the
pool for each command) and is safe to share between threads, so each channel keeps one and makes it again only
when the channel's pool was replaced. Used when the broker is Redis (``CELERY_BROKER_TRANSPORT``, set in
carsite/settings.py); imported by Celery only when it connects, never on Lambda.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """kombu's Redis ``Channel``; its synchronous client is made once per connection pool."""

    _carsite_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._carsite_client
        if client is None or client.connection_pool is not self.pool:
            client = self._carsite_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport (``redis://`` only: for ``rediss://`` kombu turns TLS on by the transport's name,
    so it keeps its own) with :class:`Channel`."""

    Channel = Channel
