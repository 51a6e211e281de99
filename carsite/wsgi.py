"""WSGI entry point (Granian under `make run`, any WSGI server, Zappa)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "carsite.settings")

# What a WSGI server itself puts in a request's environ (PEP 3333; CGI 1.1, RFC 3875 section 4.1). HTTP_* keys
# are the request's headers.
_REQUEST_KEYS = frozenset(
    {
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "GATEWAY_INTERFACE",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_PORT",
        "REMOTE_USER",
        "AUTH_TYPE",
        "RAW_URI",
        "REQUEST_URI",
    }
)


def process_environment_keys() -> frozenset[str]:
    """The names in this process's environment that no request brings (not CGI/WSGI keys, not ``HTTP_*``)."""
    return frozenset(key for key in os.environ if key not in _REQUEST_KEYS and not key.startswith("HTTP_"))


def without_process_environment(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``app`` with the server's copy of the process environment taken out of each request's environ.

    Granian starts every request's environ from ``os.environ`` (as ``wsgiref`` does), so ``SECRET_KEY``,
    ``DATABASE_URL`` and the AWS keys would reach ``request.META`` and, through it, Django's error reports (whose
    filter hides only names with KEY, SECRET, TOKEN, PASS, API or SIGNATURE in them). The keys are read once,
    at the first request (the server copies the environment after importing this module); removing them costs
    a few microseconds a request.
    """
    keys: frozenset[str] | None = None

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        nonlocal keys
        if keys is None:
            keys = process_environment_keys()
        for key in keys.intersection(environ):
            del environ[key]
        return app(environ, start_response)

    return application


application = without_process_environment(get_wsgi_application())
