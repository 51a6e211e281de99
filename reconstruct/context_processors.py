"""Template context for every page: the site name and the upload limits the upload page checks in the browser."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from reconstruct.services.direct_uploads import direct_uploads_enabled


def site(request: HttpRequest) -> dict[str, object]:
    """The site's name and upload limits, for every template."""
    return {
        "SITE_NAME": settings.SITE_NAME,
        "MAX_UPLOAD_BYTES": settings.RECONSTRUCT_MAX_UPLOAD_BYTES,
        # On AWS Lambda a request carries at most this; bigger photos go straight to S3
        # (reconstruct/services/direct_uploads.py).
        "INLINE_UPLOAD_MAX_BYTES": settings.RECONSTRUCT_INLINE_UPLOAD_MAX_BYTES,
        "DIRECT_UPLOADS": direct_uploads_enabled(),
    }
