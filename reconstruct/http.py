"""HTTP helpers shared by the pages, the JSON API and the middleware: nothing here knows a URL of its own.

Views (reconstruct/views.py) and API handlers (reconstruct/api.py) import from here, never from each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from reconstruct import presenters
from reconstruct.auth import TokenError, authenticate_token
from reconstruct.models import Reconstruction
from reconstruct.services.uploads import UploadRateLimited, upload_size_error
from reconstruct.throttle import throttle_failure, throttle_refusal

# Multipart framing and the other form fields (CSRF token) come on top of the photo's own bytes.
MULTIPART_OVERHEAD = 64 * 1024
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

View = Callable[..., HttpResponse]


def wants_json(request: HttpRequest) -> bool:
    """Whether the answer should be JSON: an API path, or a client that asks for it (Accept)."""
    # path_info: behind API Gateway's stage prefix (FORCE_SCRIPT_NAME=/dev) request.path is /dev/api/...
    return request.path_info.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def json_body(request: HttpRequest) -> Any:
    """The request's body parsed as JSON. Raises ValueError when it is not JSON, also for JSON nested deeper than
    Python's recursion limit (``json.loads`` raises RecursionError there: ``[`` 50,000 times was a 500)."""
    try:
        return json.loads(request.body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def declared_length(request: HttpRequest) -> int:
    """The body's size in bytes as the client declares it (Content-Length), 0 when absent or malformed."""
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def body_too_large(request: HttpRequest, limit: int | None = None) -> bool:
    """Whether the request announces more bytes than any valid upload of ``limit`` bytes (default
    RECONSTRUCT_MAX_UPLOAD_BYTES) plus multipart framing; checked before a byte of the body is read."""
    limit = settings.RECONSTRUCT_MAX_UPLOAD_BYTES if limit is None else limit
    return declared_length(request) > limit + MULTIPART_OVERHEAD


# A request without Content-Length (HTTP/1.1 chunked transfer) reaches Django with an empty body: WSGI gives
# no way to read it, so it is refused with 411 and this message instead of "no photo".
LENGTH_REQUIRED = (
    "The upload arrived without its size (no Content-Length header: a chunked upload), which this server cannot "
    "read. Please send the file with its size; browsers and `curl -F image=@car.jpg` do."
)
# Django skips a multipart part whose headers are not UTF-8 (a file name in Latin-1 or Shift JIS).
UNREADABLE_PART = (
    "A file arrived but its part of the form could not be read: its file name is probably not UTF-8 text. "
    "Please rename the file using plain letters and digits (or send the name as UTF-8) and try again."
)


def length_missing(request: HttpRequest) -> bool:
    """Whether a request carries a body without announcing its size: chunked (Transfer-Encoding), or a
    Content-Length that is empty or not a size. A request with neither header has no body at all (RFC 9112,
    section 6.3): that is not a missing size but a missing photo, which the caller says as such (a bare
    ``curl -X POST`` was told its upload was chunked)."""
    value = request.META.get("CONTENT_LENGTH")
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return True
    if value is None:
        return False
    try:
        return value == "" or int(value) < 0
    except ValueError:
        return True


def part_unreadable(request: HttpRequest, field: str) -> bool:
    """Whether a multipart request carried far more bytes than its readable fields: a part Django skipped
    because its headers are not UTF-8. Call after ``request.FILES`` came back without ``field``."""
    if not request.content_type.startswith("multipart/") or field in request.FILES:
        return False
    readable = sum(len(k) + sum(len(v) for v in request.POST.getlist(k)) for k in request.POST)
    readable += sum(f.size or 0 for files in request.FILES.lists() for f in files[1])
    return declared_length(request) - readable > 1024


# The ``code`` of an error whose caller names none: one per HTTP status, so every error has one.
STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    429: "throttled",
    500: "server_error",
    503: "unavailable",
}


def json_error(message: str, status: int, **extra: object) -> JsonResponse:
    """``{"error": message, "code": ..., **extra}`` with HTTP ``status``: every API error has this shape. ``code``
    is the caller's, else the status's (STATUS_CODES: ``not_found``, ``not_authenticated``...)."""
    extra.setdefault("code", STATUS_CODES.get(status, "error"))
    return JsonResponse({"error": message, **extra}, status=status)


def rate_limited_response(problem: UploadRateLimited) -> JsonResponse:
    """429 with ``Retry-After`` (s) and the same number in the body."""
    response = json_error(problem.messages[0], 429, code="rate_limited", retry_after=problem.retry_after)
    response["Retry-After"] = str(problem.retry_after)
    return response


STORAGE_DOWN_MESSAGE = (
    "The site's file storage is not answering right now, so your photo was not saved. Please try again in a minute."
)


def storage_unavailable_response() -> JsonResponse:
    """503 with ``Retry-After: 60``: the storage did not answer and nothing was stored."""
    response = json_error(STORAGE_DOWN_MESSAGE, 503, code="storage_unavailable")
    response["Retry-After"] = "60"
    return response


def created_response(request: HttpRequest, reconstruction: Reconstruction) -> JsonResponse:
    """202: accepted, poll ``status_url``; in sync mode (Lambda) the work is already done: 201."""
    status = 201 if reconstruction.is_finished else 202
    body = presenters.reconstruction_json(request, reconstruction)
    response = JsonResponse(body, status=status)
    response["Location"] = body["status_url"]  # absolute, as the body says
    if not reconstruction.is_finished:
        response["Retry-After"] = "1"  # as the status URL says while the job runs
    return response


def token_login(request: HttpRequest) -> HttpResponse | None:
    """Authenticate by ``Authorization: Token <key>`` when the request carries one: ``request.user`` becomes the
    token's owner. Returns a 401 JSON response for a malformed or unknown token (429 once a client has sent
    too many), None otherwise (also when there is no header: the session, if any, stays in charge)."""
    try:
        token_user = authenticate_token(request)
    except TokenError as problem:
        # Guessing tokens is throttled per client address like passwords (reconstruct/throttle.py). Only a
        # wrong token is checked against the throttle (a query): a right one cannot be a guess (256 random
        # bits), so a valid client behind the same address as a guesser is not locked out with it.
        # The body is never read for a refused token: django-axes records a failure with the request's form
        # data, which would make the server read (and hold a thread for) whatever an unauthenticated client sends.
        request._mark_post_parse_error()  # Django's own way to say "no form data": an empty POST and FILES
        refused = throttle_refusal(request)
        if refused is not None:
            return refused
        throttle_failure(request)
        return json_error(str(problem), 401)
    if token_user is not None:
        request.user = token_user
    return None


def authentication_required(request: HttpRequest) -> JsonResponse:
    """401 JSON for a request without valid credentials, saying how to authenticate (``WWW-Authenticate: Token``)."""
    response = json_error(
        "Authentication required: send 'Authorization: Token <key>' (create a token on your account "
        f"page, {request.build_absolute_uri(reverse('account'))}) or log in.",
        401,
    )
    response["WWW-Authenticate"] = "Token"
    return response


def wants_html(request: HttpRequest) -> bool:
    """Whether the client is a browser opening a page (it accepts text/html), rather than a script or an <img>."""
    return "text/html" in request.headers.get("Accept", "")


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    """Run Django's CSRF check on a session-authenticated request (what the middleware skipped)."""
    check = CsrfViewMiddleware(lambda _request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})


def api_view(methods: tuple[str, ...]) -> Callable[[View], View]:
    """Decorate a JSON API handler: allowed ``methods`` (405 otherwise), authentication by
    ``Authorization: Token <key>`` or the session (401 otherwise), and Django's CSRF check for a
    session-authenticated request that changes something (a token request is exempt: no browser
    attaches it by itself)."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if request.method not in methods:
                response = json_error(f"Method {request.method} is not allowed here; use {', '.join(methods)}.", 405)
                response["Allow"] = ", ".join(methods)
                return response
            if request.method not in SAFE_METHODS and body_too_large(request):
                # Before anything reads the body: a session request's CSRF check reads the form data.
                return json_error(upload_size_error(declared_length(request)), 413, code="too_large")
            refused = token_login(request)
            if refused is not None:
                return refused
            if not request.user.is_authenticated:
                return authentication_required(request)
            by_session = not request.headers.get("Authorization", "").strip()
            if by_session and request.method not in SAFE_METHODS and _csrf_failure(request) is not None:
                return json_error(
                    "CSRF check failed. Scripts should authenticate with 'Authorization: Token <key>' "
                    "(see your account page) instead of a session cookie.",
                    403,
                )
            return view(request, *args, **kwargs)

        # Exempt from the middleware's check only because the wrapper does it for session requests.
        return csrf_exempt(wrapper)

    return decorator
