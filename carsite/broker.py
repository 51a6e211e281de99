"""How a web process gives up on publishing a job to a broker that does not answer (Redis hung).

Referenced by ``CELERY_TASK_PUBLISH_RETRY_POLICY`` in carsite/settings.py. Imports nothing at module level:
settings load everywhere, Lambda included, where no broker is used.
"""

from __future__ import annotations


def publish_retry_errback(exc: BaseException, interval: float) -> None:
    """The errback of a publish's retry policy (kombu ``Connection.ensure``): called with the connection error
    before each reconnect and retry, and with each failed connect (``interval``: seconds until the next try).

    A timeout means the broker accepted the connection but did not answer within RECONSTRUCT_BROKER_TIMEOUT s
    (a hung Redis: SIGSTOP, a full disk, a saturated host). The reconnect's handshake and the retry would each
    wait that long again: an upload waited three timeouts (9 s) instead of one. So a timeout ends the retries
    here; the upload is kept as pending and the sweep queues it (reconstruct/services/recovery.py). Any other
    connection error (a reset after a Redis restart, connection refused) is retried as the policy says.

    Raises: ``exc`` itself when it is a timeout (Python's ``TimeoutError``, which ``socket.timeout`` is, or
    redis-py's ``TimeoutError``); kombu re-raises it as ``kombu.exceptions.OperationalError``.
    """
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, TimeoutError | RedisTimeoutError):
        raise exc
