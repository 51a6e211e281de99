"""Photos too large to pass through AWS Lambda go from the browser straight to S3.

Lambda takes at most 6 MB per request, and API Gateway hands the function a binary body base64-encoded (a third
bigger): about 4.4 MB of photo, while phones take 3-12 MB JPEGs. So on Lambda:

1. A request whose body is over RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES is answered at once with a clear 413 that says
   what to do (RequestSizeLimitMiddleware); a bigger one never reaches the function at all, so the upload page checks
   the size before sending.
2. For a bigger photo the page asks `POST /api/uploads/` for a presigned POST (direct_upload_presign): a short-lived
   form that lets the browser put one object of at most RECONSTRUCT_MAX_UPLOAD_BYTES under a key the server chose,
   incoming/<user id>/<upload id>, and nothing else.
3. The browser sends the photo to S3 with it, then calls `POST /api/uploads/<upload id>/complete/`
   (direct_upload_complete): the site reads the object back, validates it like any upload (a real decode, pixel
   limits), stores it through reconstruction_create and reconstructs it in the request (sync mode).

Objects left under incoming/ by uploads never completed are removed by an S3 lifecycle rule (README, Deploy to AWS).
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse

from reconstruct import services
from reconstruct.api import api_view, created_response, error, rate_limited_response
from reconstruct.models import Reconstruction

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

# Multipart framing and the CSRF field come on top of the photo's own bytes.
MULTIPART_OVERHEAD = 64 * 1024
PRESIGN_EXPIRES_S = 900


class DirectUploadsUnavailable(Exception):
    """Media are not in S3 (local files), so there is nothing to upload to directly."""


def _size(n: int) -> str:
    # filesizeformat joins number and unit with a no-break space; JSON clients would see "\u00a0".
    return filesizeformat(n).replace("\xa0", " ")


def direct_uploads_enabled() -> bool:
    return settings.RECONSTRUCT_DIRECT_UPLOADS and hasattr(default_storage, "bucket_name")


def inline_upload_limited() -> bool:
    """Whether requests are capped below the upload limit (on Lambda): only then is the middleware active."""
    return settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES < settings.RECONSTRUCT_MAX_UPLOAD_BYTES


def inline_upload_size_error(size: int) -> str:
    limit = settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES
    message = (
        f"This upload is {_size(size)}, more than the {_size(limit)} one request to this server may carry "
        "(AWS Lambda accepts at most 6 MB per request, and an upload grows by a third on the way). "
    )
    if direct_uploads_enabled():
        return message + (
            "The upload page sends bigger photos straight to storage: reload it and choose the photo again. "
            "Scripts: POST /api/uploads/ for an upload form, send the photo to S3 with it, then POST "
            "/api/uploads/<upload_id>/complete/."
        )
    return message + "Please upload a smaller photo (for example resized to 2000 pixels wide, or saved as JPEG)."


def _incoming_name(user: AbstractBaseUser, upload_id: uuid.UUID) -> str:
    # Server-chosen and scoped to the user: a client can only ever complete its own uploads.
    return f"incoming/{user.pk}/{upload_id}"


def direct_upload_presign(user: AbstractBaseUser) -> dict[str, object]:
    """A presigned POST that lets the browser store one photo under a key the server chose."""
    if not direct_uploads_enabled():
        raise DirectUploadsUnavailable
    upload_id = uuid.uuid4()
    name = _incoming_name(user, upload_id)
    location = getattr(default_storage, "location", "")
    key = posixpath.join(location, name) if location else name
    client = default_storage.connection.meta.client
    form = client.generate_presigned_post(
        Bucket=default_storage.bucket_name,
        Key=key,
        Conditions=[["content-length-range", 1, settings.RECONSTRUCT_MAX_UPLOAD_BYTES]],
        ExpiresIn=PRESIGN_EXPIRES_S,
    )
    return {
        "upload_id": str(upload_id),
        "url": form["url"],
        "fields": form["fields"],
        "max_bytes": settings.RECONSTRUCT_MAX_UPLOAD_BYTES,
        "expires_in": PRESIGN_EXPIRES_S,
    }


def direct_upload_complete(user: AbstractBaseUser, upload_id: uuid.UUID, filename: str = "") -> Reconstruction:
    """Turn a photo the browser put in S3 into a reconstruction, exactly as if it had been uploaded to the site.

    Raises ValidationError (or services.UploadTooLarge) for a missing object or an unusable file. The incoming
    object is removed once it is stored as a reconstruction or refused; after any other failure it stays, so the
    same call can be repeated.
    """
    if not direct_uploads_enabled():
        raise DirectUploadsUnavailable
    name = _incoming_name(user, upload_id)
    if not default_storage.exists(name):
        raise ValidationError(
            "There is no photo for this upload: it was never sent to storage, it expired, or it was used already. "
            "Please upload the photo again.",
            code="no_upload",
        )
    services.reconstruction_rate_check(user)  # before the try: a photo refused for now stays for a later call
    size = default_storage.size(name)
    try:
        if size > settings.RECONSTRUCT_MAX_UPLOAD_BYTES:
            raise services.UploadTooLarge(services.upload_size_error(size), code="too_large")
        with default_storage.open(name, "rb") as handle:
            content = ContentFile(handle.read(), name=filename.strip() or "upload")
        reconstruction = services.reconstruction_create(user, content)
    except ValidationError:
        default_storage.delete(name)
        raise
    default_storage.delete(name)
    return reconstruction


# --- HTTP ------------------------------------------------------------------------------------------


@api_view(("POST",))
def presign(request: HttpRequest) -> HttpResponse:
    """POST /api/uploads/ -> 201 {upload_id, url, fields, complete_url, max_bytes, expires_in}."""
    try:
        services.reconstruction_rate_check(request.user)
        ticket = direct_upload_presign(request.user)
    except services.UploadRateLimited as problem:
        return rate_limited_response(problem)
    except DirectUploadsUnavailable:
        return error(
            "Direct uploads need the media in S3 (AWS_STORAGE_BUCKET_NAME). "
            "Send the photo to /api/reconstructions/ instead.",
            404,
            code="direct_uploads_unavailable",
        )
    complete = reverse("direct_uploads:complete", args=[ticket["upload_id"]])
    return JsonResponse({**ticket, "complete_url": request.build_absolute_uri(complete)}, status=201)


@api_view(("POST",))
def complete(request: HttpRequest, upload_id: uuid.UUID) -> HttpResponse:
    """POST /api/uploads/<upload_id>/complete/ (optional JSON {"name": "car.jpg"}) -> the reconstruction."""
    filename = ""
    if request.content_type == "application/json" and request.body:
        try:
            filename = str(json.loads(request.body).get("name") or "")
        except (ValueError, AttributeError):
            return error('The body must be JSON like {"name": "car.jpg"}, or empty.', 400, code="bad_request")
    try:
        reconstruction = direct_upload_complete(request.user, upload_id, filename)
    except services.UploadRateLimited as problem:
        return rate_limited_response(problem)
    except DirectUploadsUnavailable:
        return error("Direct uploads need the media in S3 (AWS_STORAGE_BUCKET_NAME).", 404)
    except services.UploadTooLarge as problem:
        return error(problem.messages[0], 413, code="too_large")
    except ValidationError as problem:
        return error(problem.messages[0], 400, code=problem.code or "invalid_image")
    return created_response(request, reconstruction)


app_name = "direct_uploads"
urlpatterns = [
    path("", presign, name="presign"),
    path("<uuid:upload_id>/complete/", complete, name="complete"),
]


class RequestSizeLimitMiddleware:
    """Refuse, with a message that says what to do, a body larger than one request through Lambda may carry.

    Only active where requests are capped below the upload limit (RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES, 4 MB on
    Lambda). It reads the declared length only, never the body.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and inline_upload_limited():
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD:
                return self._too_large(request, length)
        return self.get_response(request)

    def _too_large(self, request: HttpRequest, length: int) -> HttpResponse:
        message = inline_upload_size_error(length)
        if request.path_info.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
            return JsonResponse({"error": message, "code": "too_large_for_lambda"}, status=413)
        if request.path == reverse("reconstruct:upload") and request.user.is_authenticated:
            return render(request, "reconstruct/upload.html", {"errors": [message]}, status=413)
        return HttpResponse(message, content_type="text/plain; charset=utf-8", status=413)
