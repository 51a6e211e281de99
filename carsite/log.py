"""Logging of the site (settings.LOGGING)."""

from __future__ import annotations

import copy
import logging

# Django's security loggers (``django.security.<exception class>``) for a client's bad request, which the site
# answers with 400: a Host header not in ALLOWED_HOSTS, a form with too many fields or files, a body over
# DATA_UPLOAD_MAX_MEMORY_SIZE. Others (SuspiciousFileOperation: a path the site's own code built) keep their trace.
CLIENT_ERRORS = frozenset(
    f"django.security.{name}"
    for name in ("DisallowedHost", "RequestDataTooBig", "TooManyFieldsSent", "TooManyFilesSent")
)


class ClientErrorFormatter(logging.Formatter):
    """Django logs each of a client's bad requests (``CLIENT_ERRORS``) at ERROR with the exception's traceback:
    13 lines for one scanner's probe, the level of a real fault. This formatter writes such a record as one
    WARNING line (its message names the host or the limit). It formats a copy: the record itself, which every
    other handler receives too, stays as Django made it. Every other record is formatted as by
    ``logging.Formatter``."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name in CLIENT_ERRORS and record.levelno == logging.ERROR:
            record = copy.copy(record)
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.exc_info = record.exc_text = None
        return super().format(record)
