"""Template context for every page: the site name and the upload limits the upload page checks in the browser."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from ml.decode import format_list
from reconstruct.images import UPLOAD_FORMATS
from reconstruct.services.direct_uploads import direct_uploads_enabled

# "JPEG, PNG, WebP, GIF, TIFF, BMP or AVIF": what the upload form and the API accept, for the pages that say so.
UPLOAD_FORMATS_TEXT = format_list(UPLOAD_FORMATS)


def site(request: HttpRequest) -> dict[str, object]:
    """The site's name, the upload limits and accepted formats, for every template."""
    return {
        "SITE_NAME": settings.SITE_NAME,
        "MAX_UPLOAD_BYTES": settings.RECONSTRUCT_MAX_UPLOAD_BYTES,
        "UPLOAD_FORMATS_TEXT": UPLOAD_FORMATS_TEXT,
        # On AWS Lambda a request carries at most this; bigger photos go straight to S3
        # (reconstruct/services/direct_uploads.py).
        "INLINE_UPLOAD_MAX_BYTES": settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES,
        "DIRECT_UPLOADS": direct_uploads_enabled(),
    }
