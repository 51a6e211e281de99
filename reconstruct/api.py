"""The JSON API: /api/reconstructions/ (list, create), /api/reconstructions/<id>/ (detail, delete), and
/api/uploads/ + /api/uploads/<id>/complete/ (a photo sent by the browser straight to S3, for Lambda).

Authentication: `Authorization: Token <key>` (from the account page) or the browser session. A
request authenticated by token is exempt from CSRF checks (no browser attaches it by itself); a
session-authenticated one that changes something must pass them like any form.
"""

from __future__ import annotations

import math
import uuid

from django.core.exceptions import RequestDataTooBig, TooManyFilesSent, ValidationError
from django.core.paginator import InvalidPage, Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse

from reconstruct import presenters, selectors
from reconstruct.http import (
    LENGTH_REQUIRED,
    UNREADABLE_PART,
    api_view,
    body_too_large,
    created_response,
    json_body,
    json_error,
    length_missing,
    part_unreadable,
    rate_limited_response,
    storage_unavailable_response,
)
from reconstruct.models import Reconstruction
from reconstruct.services.direct_uploads import DirectUploadsUnavailable, direct_upload_complete, direct_upload_presign
from reconstruct.services.reconstructions import reconstruction_create, reconstruction_delete, reconstruction_retry
from reconstruct.services.uploads import UploadRateLimited, UploadTooLarge, reconstruction_rate_check, upload_size_error
from reconstruct.services.waiting import MAX_WAIT_S, reconstruction_wait, reconstruction_wait_new
from reconstruct.storage import StorageUnavailable

PAGE_SIZE = 50


@api_view(("GET", "POST"))
def reconstructions(request: HttpRequest) -> HttpResponse:
    """GET: the caller's reconstructions, 50 a page, newest first. POST: a new one from a multipart ``image``
    (202 queued; 201 finished: in sync mode, or with ``?wait=<seconds>`` when it finished within them)."""
    if request.method == "POST":
        return _create(request)
    paginator = Paginator(selectors.reconstruction_list(request.user), PAGE_SIZE)
    try:
        page = paginator.page(request.GET.get("page") or 1)
    except InvalidPage:
        return json_error(f"No such page; there are {paginator.num_pages}.", 404)

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


def _wait_seconds(request: HttpRequest) -> float | None:
    """The ``?wait=<seconds>`` of a request, or None without one. Raises ValueError for anything but a finite
    number of seconds >= 0 (more than MAX_WAIT_S waits MAX_WAIT_S)."""
    wait = request.GET.get("wait")
    if wait is None:
        return None
    try:
        seconds = float(wait)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"wait must be a number of seconds, 0 or more (at most {MAX_WAIT_S:.0f} are waited).")
    return seconds


def _created_after_wait(request: HttpRequest, reconstruction: Reconstruction, wait: float | None) -> HttpResponse:
    """The answer to an upload: with ``?wait=`` (``wait`` s) once the job finished or the time is up, so one request
    can replace an upload and a status long-poll (201 with the result if it finished in time, else 202)."""
    if wait is not None and not reconstruction.is_finished:
        reconstruction_wait_new(reconstruction, wait)
        reconstruction = selectors.reconstruction_get(request.user, reconstruction.uuid) or reconstruction
    return created_response(request, reconstruction)


def _create(request: HttpRequest) -> HttpResponse:
    try:
        wait = _wait_seconds(request)
    except ValueError as problem:
        return json_error(str(problem), 400, code="bad_request")
    try:
        reconstruction_rate_check(request.user)
    except UploadRateLimited as problem:
        return rate_limited_response(problem)
    if length_missing(request):
        return json_error(LENGTH_REQUIRED, 411, code="length_required")
    if body_too_large(request):
        return json_error(upload_size_error(int(request.META["CONTENT_LENGTH"])), 413, code="too_large")
    try:
        upload = request.FILES.get("image")
    except RequestDataTooBig:
        return json_error("The request is too large.", 413, code="too_large")
    except (TooManyFilesSent, MultiPartParserError):
        return json_error("The request body could not be read as multipart/form-data.", 400, code="bad_request")
    if upload is None and part_unreadable(request, "image"):
        return json_error(UNREADABLE_PART, 400, code="unreadable_part")
    if upload is None:
        return json_error(
            "Send the photo as multipart/form-data in a field named 'image', "
            "for example: curl -F image=@car.jpg -H 'Authorization: Token <key>' " + request.build_absolute_uri(),
            400,
            code="no_image",
        )
    try:
        reconstruction = reconstruction_create(user=request.user, upload=upload)
    except UploadRateLimited as problem:
        return rate_limited_response(problem)
    except StorageUnavailable:
        return storage_unavailable_response()
    except UploadTooLarge as problem:
        return json_error(problem.messages[0], 413, code="too_large")
    except ValidationError as problem:
        return json_error(problem.messages[0], 400, code=problem.code or "invalid_image")
    return _created_after_wait(request, reconstruction, wait)


@api_view(("GET", "DELETE"))
def reconstruction(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """GET: one of the caller's reconstructions (``Retry-After: 1`` while it runs). DELETE: it and its files.

    ``?wait=<seconds>`` (a long-poll, at most 25 s): while the job is pending or running, answer when it
    finishes or when the seconds are up, whichever comes first.
    """
    item = selectors.reconstruction_get(request.user, public_id)
    if item is None:
        return json_error("No such reconstruction.", 404)
    if request.method == "DELETE":
        reconstruction_delete(item)
        return HttpResponse(status=204)
    try:
        wait = _wait_seconds(request)
    except ValueError as problem:
        return json_error(str(problem), 400, code="bad_request")
    if wait is not None and not item.is_finished:
        reconstruction_wait(item, wait)
        item = selectors.reconstruction_get(request.user, public_id)
        if item is None:  # deleted meanwhile
            return json_error("No such reconstruction.", 404)
    response = JsonResponse(presenters.reconstruction_json(request, item))
    if not item.is_finished:
        response["Retry-After"] = "1"
    return response


@api_view(("POST",))
def retry(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST: queue a failed (or stuck) reconstruction again, as the page's button does -> 202 and its new state;
    409 when it is neither (its ``retry_url`` is null)."""
    item = selectors.reconstruction_get(request.user, public_id)
    if item is None:
        return json_error("No such reconstruction.", 404)
    try:
        item = reconstruction_retry(item)
    except ValidationError as problem:
        return json_error(problem.messages[0], 409, code="not_retryable")
    return created_response(request, item)


def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """A JSON 404 for any other path under /api/."""
    return json_error("Not found. The API lives at /api/reconstructions/.", 404)


# --- Direct uploads to S3 (reconstruct/services/direct_uploads.py) ---------------------------------


@api_view(("POST",))
def upload_presign(request: HttpRequest) -> HttpResponse:
    """POST /api/uploads/ -> 201 {upload_id, url, fields, complete_url, max_bytes, expires_in}."""
    try:
        reconstruction_rate_check(request.user)
        ticket = direct_upload_presign(request.user)
    except UploadRateLimited as problem:
        return rate_limited_response(problem)
    except DirectUploadsUnavailable:
        return json_error(
            "Direct uploads need the media in S3 (AWS_STORAGE_BUCKET_NAME). "
            "Send the photo to /api/reconstructions/ instead.",
            404,
            code="direct_uploads_unavailable",
        )
    complete = reverse("direct_uploads:complete", args=[ticket["upload_id"]])
    return JsonResponse({**ticket, "complete_url": request.build_absolute_uri(complete)}, status=201)


@api_view(("POST",))
def upload_complete(request: HttpRequest, upload_id: uuid.UUID) -> HttpResponse:
    """POST /api/uploads/<upload_id>/complete/ (optional JSON {"name": "car.jpg"}) -> the reconstruction (202
    queued; 201 finished: in sync mode, or with ``?wait=<seconds>`` when it finished within them)."""
    try:
        wait = _wait_seconds(request)
    except ValueError as problem:
        return json_error(str(problem), 400, code="bad_request")
    filename = ""
    if request.content_type == "application/json" and request.body:
        try:
            filename = str(json_body(request).get("name") or "")
        except (ValueError, AttributeError):
            return json_error('The body must be JSON like {"name": "car.jpg"}, or empty.', 400, code="bad_request")
    try:
        reconstruction = direct_upload_complete(user=request.user, upload_id=upload_id, filename=filename)
    except UploadRateLimited as problem:
        return rate_limited_response(problem)
    except StorageUnavailable:
        return storage_unavailable_response()
    except DirectUploadsUnavailable:
        return json_error("Direct uploads need the media in S3 (AWS_STORAGE_BUCKET_NAME).", 404)
    except UploadTooLarge as problem:
        return json_error(problem.messages[0], 413, code="too_large")
    except ValidationError as problem:
        return json_error(problem.messages[0], 400, code=problem.code or "invalid_image")
    return _created_after_wait(request, reconstruction, wait)
