"""The session engine (SESSION_ENGINE): Django's database sessions, read by a query compiled once per connection.

Every signed-in page reads its session first; compiling that lookup anew each time cost more CPU than running it
(reconstruct/compiled.py). Django documents extending the database-backed engine this way ("Extending
database-backed session engines"); the table, the stored data and the cookies are Django's own, so sessions made
by ``django.contrib.sessions.backends.db`` keep working.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import BACKEND_SESSION_KEY
from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.core.exceptions import SuspiciousOperation
from django.utils import timezone

from reconstruct.auth import BACKEND, DJANGO_BACKEND
from reconstruct.compiled import CompiledQuery

# The session key, then the moment it must still be valid at (the SQL's order).
_UNEXPIRED = CompiledQuery(
    lambda session_key, now: Session.objects.filter(session_key=session_key).filter(expire_date__gt=now)[:1],
    [(Session._meta.get_field("session_key"), "0" * 32), (Session._meta.get_field("expire_date"), timezone.now())],
)


class SessionStore(db.SessionStore):
    """``django.contrib.sessions.backends.db.SessionStore`` whose unexpired-session lookup is compiled once, and
    which reads a session signed in through Django's ``ModelBackend`` as signed in through the site's
    (``reconstruct.auth.ModelBackend``, its subclass): sessions from before stop 29 stay signed in."""

    def load(self) -> dict[str, Any]:
        data = super().load()
        if data.get(BACKEND_SESSION_KEY) == DJANGO_BACKEND:
            data[BACKEND_SESSION_KEY] = BACKEND
        return data

    def _get_session_from_db(self) -> Session | None:
        try:
            found = _UNEXPIRED.first(self.session_key, timezone.now())
        except SuspiciousOperation as error:  # as Django's own
            logging.getLogger(f"django.security.{error.__class__.__name__}").warning(str(error))
            found = None
        if found is None:
            self._session_key = None
        return found
