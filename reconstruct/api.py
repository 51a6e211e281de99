"""The JSON API: /api/reconstructions/ (list, create) and /api/reconstructions/<id>/ (detail, delete).

Authentication: `Authorization: Token <key>` (from the account page) or the browser session. A
request authenticated by token is exempt from CSRF checks (no browser attaches it by itself); a
session-authenticated one that changes something must pass them like any form.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps

from django.core.exceptions import RequestDataTooBig, TooManyFilesSent, ValidationError
from django.core.paginator import InvalidPage, Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from reconstruct import presenters, selectors, services
from reconstruct.auth import TokenError, authenticate_token
from reconstruct.models import Reconstruction
from reconstruct.views import body_too_large

PAGE_SIZE = 50
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

View = Callable[..., HttpResponse]


def error(message: str, status: int, **extra: object) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    """Run Django's CSRF check on a session-authenticated request (what the middleware skipped)."""
    check = CsrfViewMiddleware(lambda _request: HttpResponse())
    check.process_request(request)
    return check.process_view(request, None, (), {})


def api_view(methods: tuple[str, ...]) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if request.method not in methods:
                response = error(f"Method {request.method} is not allowed here; use {', '.join(methods)}.", 405)
                response["Allow"] = ", ".join(methods)
                return response
            try:
                token_user = authenticate_token(request)
            except TokenError as problem:
                return error(str(problem), 401)
            if token_user is not None:
                request.user = token_user
            elif request.user.is_authenticated:
                if request.method not in SAFE_METHODS and _csrf_failure(request) is not None:
                    return error(
                        "CSRF check failed. Scripts should authenticate with 'Authorization: Token <key>' "
                        "(see your account page) instead of a session cookie.",
                        403,
                    )
            else:
                return error(
                    "Authentication required: send 'Authorization: Token <key>' (create a token on your account "
                    f"page, {request.build_absolute_uri(reverse('account'))}) or log in.",
                    401,
                )
            return view(request, *args, **kwargs)

        # Exempt from the middleware's check only because the wrapper does it for session requests.
        return csrf_exempt(wrapper)

    return decorator


@api_view(("GET", "POST"))
def reconstructions(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    paginator = Paginator(selectors.reconstruction_list(request.user), PAGE_SIZE)
    try:
        page = paginator.page(request.GET.get("page") or 1)
    except InvalidPage:
        return error(f"No such page; there are {paginator.num_pages}.", 404)

    def page_url(number: int) -> str:
        return request.build_absolute_uri(f"{reverse('api:reconstructions')}?page={number}")

    return JsonResponse(
        {
            "count": paginator.count,
            "page": page.number,
            "pages": paginator.num_pages,
            "next": page_url(page.next_page_number()) if page.has_next() else None,
            "previous": page_url(page.previous_page_number()) if page.has_previous() else None,
            "results": [presenters.reconstruction_json(request, r) for r in page.object_list],
        }
    )


def rate_limited_response(problem: services.UploadRateLimited) -> JsonResponse:
    response = error(problem.messages[0], 429, code="rate_limited", retry_after=problem.retry_after)
    response["Retry-After"] = str(problem.retry_after)
    return response


def _create(request: HttpRequest) -> HttpResponse:
    try:
        services.reconstruction_rate_check(request.user)
    except services.UploadRateLimited as problem:
        return rate_limited_response(problem)
    if body_too_large(request):
        return error(services.upload_size_error(int(request.META["CONTENT_LENGTH"])), 413, code="too_large")
    try:
        upload = request.FILES.get("image")
    except RequestDataTooBig:
        return error("The request is too large.", 413, code="too_large")
    except (TooManyFilesSent, MultiPartParserError):
        return error("The request body could not be read as multipart/form-data.", 400, code="bad_request")
    if upload is None:
        return error(
            "Send the photo as multipart/form-data in a field named 'image', "
            "for example: curl -F image=@car.jpg -H 'Authorization: Token <key>' " + request.build_absolute_uri(),
            400,
            code="no_image",
        )
    try:
        reconstruction = services.reconstruction_create(request.user, upload)
    except services.UploadRateLimited as problem:
        return rate_limited_response(problem)
    except services.UploadTooLarge as problem:
        return error(problem.messages[0], 413, code="too_large")
    except ValidationError as problem:
        return error(problem.messages[0], 400, code=problem.code or "invalid_image")
    return created_response(request, reconstruction)


def created_response(request: HttpRequest, reconstruction: Reconstruction) -> JsonResponse:
    """202: accepted, poll ``status_url``; in sync mode (Lambda) the work is already done: 201."""
    status = 201 if reconstruction.is_finished else 202
    response = JsonResponse(presenters.reconstruction_json(request, reconstruction), status=status)
    response["Location"] = request.build_absolute_uri(reverse("api:reconstruction", args=[reconstruction.uuid]))
    return response


@api_view(("GET", "DELETE"))
def reconstruction(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    item = selectors.reconstruction_get(request.user, public_id)
    if item is None:
        return error("No such reconstruction.", 404)
    if request.method == "DELETE":
        services.reconstruction_delete(item)
        return HttpResponse(status=204)
    response = JsonResponse(presenters.reconstruction_json(request, item))
    if not item.is_finished:
        response["Retry-After"] = "1"
    return response


def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    return error("Not found. The API lives at /api/reconstructions/.", 404)
