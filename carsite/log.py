"""Logging filters of the site (settings.LOGGING)."""

from __future__ import annotations

import logging


class ClientErrorFilter(logging.Filter):
    """Django's security loggers (``django.security.<exception class>``: a Host header not in ALLOWED_HOSTS,
    a form with too many fields, a body over DATA_UPLOAD_MAX_MEMORY_SIZE) report each such request, which the
    site answers with 400, at ERROR with the exception's traceback: 13 lines for one scanner's probe, the same
    level as a real fault. This filter, on the handler, turns those records into one WARNING line (the message
    names the host or the limit). Every other record passes unchanged. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.exc_info = record.exc_text = None
        return True
