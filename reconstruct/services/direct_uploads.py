"""Photos too large to pass through AWS Lambda go from the browser straight to S3.

Lambda takes at most 6 MB per request, and API Gateway hands the function a binary body base64-encoded (a third
bigger): about 4.4 MB of photo, while phones take 3-12 MB JPEGs. So on Lambda:

1. A request whose body is over RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES is answered at once with a clear 413 that says
   what to do (reconstruct/middleware.py); a bigger one never reaches the function at all, so the upload page checks
   the size before sending.
2. For a bigger photo the page asks `POST /api/uploads/` (reconstruct/api.py) for a presigned POST
   (direct_upload_presign): a short-lived form that lets the browser put one object of at most
   RECONSTRUCT_MAX_UPLOAD_BYTES under a key the server chose, incoming/<user id>/<upload id>, and nothing else.
3. The browser sends the photo to S3 with it, then calls `POST /api/uploads/<upload id>/complete/`
   (direct_upload_complete): the site reads the object back, validates it like any upload (a real decode, pixel
   limits), stores it through reconstruction_create and reconstructs it in the request (sync mode).

Objects left under incoming/ by uploads never completed are removed by an S3 lifecycle rule (README, Deploy to AWS).
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from reconstruct.images import sizes_text
from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_create
from reconstruct.services.uploads import UploadTooLarge, reconstruction_rate_check, upload_size_error
from reconstruct.storage import storage_is_s3, storage_s3_key

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

PRESIGN_EXPIRES_S = 900


class DirectUploadsUnavailable(Exception):
    """Media are not in S3 (local files), so there is nothing to upload to directly."""


def direct_uploads_enabled() -> bool:
    """Whether browsers may send photos straight to S3 (RECONSTRUCT_DIRECT_UPLOADS, and the media are in S3)."""
    return settings.RECONSTRUCT_DIRECT_UPLOADS and storage_is_s3()


def inline_upload_limited() -> bool:
    """Whether requests are capped below the upload limit (on Lambda): only then is the middleware active."""
    return settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES < settings.RECONSTRUCT_MAX_UPLOAD_BYTES


def inline_upload_size_error(size: int) -> str:
    """Why a request of ``size`` bytes is refused on Lambda, and what to do instead."""
    limit = settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES
    have, most = sizes_text(size, limit)
    message = (
        f"This upload is {have}, more than the {most} one request to this server may carry "
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
    key = storage_s3_key(name)
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


def direct_upload_complete(*, user: AbstractBaseUser, upload_id: uuid.UUID, filename: str = "") -> Reconstruction:
    """Turn a photo the browser put in S3 into a reconstruction, exactly as if it had been uploaded to the site.

    Raises ValidationError (or its subclasses UploadTooLarge, UploadRateLimited) for a missing object or an
    unusable file. The incoming object is removed once it is stored as a reconstruction or refused; after any
    other failure it stays, so the same call can be repeated.
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
    reconstruction_rate_check(user)  # before the try: a photo refused for now stays for a later call
    size = default_storage.size(name)
    try:
        if size > settings.RECONSTRUCT_MAX_UPLOAD_BYTES:
            raise UploadTooLarge(upload_size_error(size), code="too_large")
        with default_storage.open(name, "rb") as handle:
            content = ContentFile(handle.read(), name=filename.strip() or "upload")
        reconstruction = reconstruction_create(user=user, upload=content)
    except ValidationError:
        default_storage.delete(name)
        raise
    default_storage.delete(name)
    return reconstruction
