"""Middleware of the site (settings.MIDDLEWARE)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from reconstruct.http import body_too_large, declared_length, wants_json
from reconstruct.services.direct_uploads import inline_upload_limited, inline_upload_size_error


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
    """Refuse, with a message that says what to do, a body larger than one request through Lambda may carry.

    Only active where requests are capped below the upload limit (RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES, 4 MB on
    Lambda; reconstruct/services/direct_uploads.py explains why). It reads the declared length only, never the body.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.method == "POST"
            and inline_upload_limited()
            and body_too_large(request, settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES)
        ):
            return self._too_large(request, declared_length(request))
        return self.get_response(request)

    def _too_large(self, request: HttpRequest, length: int) -> HttpResponse:
        message = inline_upload_size_error(length)
        if wants_json(request):
            return JsonResponse({"error": message, "code": "too_large_for_lambda"}, status=413)
        if request.path == reverse("reconstruct:upload") and request.user.is_authenticated:
            return render(request, "reconstruct/upload.html", {"errors": [message]}, status=413)
        return HttpResponse(message, content_type="text/plain; charset=utf-8", status=413)
