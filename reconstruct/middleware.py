"""Middleware of the site (settings.MIDDLEWARE)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from reconstruct.http import body_too_large, declared_length, wants_json
from reconstruct.images import sizes_text
from reconstruct.services.direct_uploads import inline_upload_limited, inline_upload_size_error
from reconstruct.services.uploads import upload_size_error


class PreloadMiddleware:
    """Not a middleware at all after startup: with RECONSTRUCT_PRELOAD (on by default on AWS Lambda) its
    ``__init__``, which Django calls once when it builds the request handler, loads what the first request would
    otherwise load (reconstruct/services/reconstructions.py: reconstruction_runtime_preload), then raises
    ``MiddlewareNotUsed`` so that it is left out of every request (Django docs, "Marking middleware as unused").
    On Lambda zappa builds the handler in the init phase, before the first request arrives."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        if settings.RECONSTRUCT_PRELOAD:
            from reconstruct.services.reconstructions import reconstruction_runtime_preload

            reconstruction_runtime_preload()
            url_resolver_preload()
        raise MiddlewareNotUsed


def url_resolver_preload() -> None:
    """Import the URLconf (and with it every view module) and build what ``resolve()`` and ``reverse()`` build on
    first use: each route's compiled regex and the reverse lookup tables. Every request needs them, so this moves
    work out of a process's first request without adding any: about 0.1 s of CPU here (the first upload request
    of a fresh process took 382 ms under cProfile against 50 ms for the next, 270 of them in the URL resolver)."""
    from django.urls import URLResolver, get_resolver

    def compile_all(resolver: URLResolver) -> None:
        for entry in resolver.url_patterns:
            entry.pattern.regex  # noqa: B018 (compiled and cached on first access)
            if isinstance(entry, URLResolver):
                compile_all(entry)

    root = get_resolver()
    compile_all(root)
    root.reverse_dict  # noqa: B018 (populates the reverse tables of every included URLconf)


class RequestSizeLimitMiddleware:
    """Refuse, before a byte of it is read, a body larger than its sender may send: 413 with a message that says
    what to do. It reads the declared length (Content-Length) only; a body without one reaches Django empty.

    - Everywhere, a body over RECONSTRUCT_MAX_REQUEST_BYTES (the largest photo plus multipart framing) from
      anyone but staff. Django streams a form's files to temporary files with no size limit of its own
      (DATA_UPLOAD_MAX_MEMORY_SIZE counts the other fields only), and the CSRF check reads the form of every
      POST: without this, anyone holding a CSRF cookie could make the server read, and write to disk, any
      amount through the sign-in form (300 MB took 0.4 s). Staff may send up to
      RECONSTRUCT_MAX_STAFF_REQUEST_BYTES to the admin, which takes a zip of training photos; elsewhere they are
      held to the same limit as everyone.
    - Where one request may carry less than an upload (RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES, 4 MB on AWS
      Lambda; reconstruct/services/direct_uploads.py explains why), a body over that, from anyone.

    The session's user is looked up only for a body over the general limit sent to the admin.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = declared_length(request)
        if length > settings.RECONSTRUCT_MAX_REQUEST_BYTES:
            refusal = self._over_limit(request, length)
            if refusal is not None:
                return refusal
        if (
            request.method == "POST"
            and inline_upload_limited()
            and body_too_large(request, settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES)
        ):
            return self._too_large(request, inline_upload_size_error(length), "too_large_for_lambda")
        return self.get_response(request)

    def _over_limit(self, request: HttpRequest, length: int) -> HttpResponse | None:
        """The 413 for a body of ``length`` bytes, over RECONSTRUCT_MAX_REQUEST_BYTES; None for staff's to the
        admin within their own limit. Where a photo is sent the message is the upload's own."""
        if request.path.startswith(reverse("admin:index")) and request.user.is_authenticated and request.user.is_staff:
            if length <= settings.RECONSTRUCT_MAX_STAFF_REQUEST_BYTES:
                return None
            have, most = sizes_text(length, settings.RECONSTRUCT_MAX_STAFF_REQUEST_BYTES)
            message = (
                f"This request is {have}; staff may send the admin at most {most} in one request. "
                "Please send fewer photos at once, or split the zip."
            )
        elif request.path in (reverse("reconstruct:upload"), reverse("api:reconstructions")):
            message = upload_size_error(length)
        else:
            have, most = sizes_text(length, settings.RECONSTRUCT_MAX_REQUEST_BYTES)
            message = f"This request is {have}; this site takes at most {most} in one request."
        return self._too_large(request, message, "too_large")

    def _too_large(self, request: HttpRequest, message: str, code: str) -> HttpResponse:
        if wants_json(request):
            return JsonResponse({"error": message, "code": code}, status=413)
        if request.path == reverse("reconstruct:upload") and request.user.is_authenticated:
            return render(request, "reconstruct/upload.html", {"errors": [message]}, status=413)
        return HttpResponse(message, content_type="text/plain; charset=utf-8", status=413)
