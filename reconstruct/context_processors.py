"""Template context for every page: the site name and the upload limits the upload page checks in the browser."""

from __future__ import annotations

import time

from django.conf import settings
from django.http import HttpRequest

from ml.decode import format_list
from reconstruct.images import UPLOAD_FORMATS
from reconstruct.services.direct_uploads import direct_uploads_enabled

# "JPEG, PNG, WebP, GIF, TIFF, BMP or AVIF": what the upload form and the API accept, for the pages that say so.
UPLOAD_FORMATS_TEXT = format_list(UPLOAD_FORMATS)


LATENT_SIZE_SECONDS = 60.0  # how long a process trusts the active model's latent size it read
_latent_size: list[float | int] = []  # [read at (monotonic s), size]


def active_latent_size() -> int:
    """How many numbers the active model squeezes a photo into (its ``latent_dim``), for the pages that say so.

    Read from the database at most once a minute per process, and only by a page that shows it (the template
    engine calls it when the name is used). 128, the shipped model's, before any model is registered.
    """
    from reconstruct.models import ModelVersion

    now = time.monotonic()
    if _latent_size and now - _latent_size[0] < LATENT_SIZE_SECONDS:
        return int(_latent_size[1])
    size = ModelVersion.objects.filter(is_active=True).values_list("metadata__model__latent_dim", flat=True).first()
    size = size if isinstance(size, int) and size > 0 else 128
    _latent_size[:] = [now, size]
    return size


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
        "LATENT_SIZE": active_latent_size,  # a callable: evaluated only where a page names it
    }
