"""Uploads: the hourly limit per account, and the real decode that turns an uploaded file into a stored original.

``upload_prepare`` is where an upload is validated: byte size, format, pixel count, a full decode, smallest side.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.db import transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from PIL import Image, ImageOps

from ml.preprocess import DECODE_ERRORS, to_rgb
from reconstruct.images import STORED_FORMATS
from reconstruct.models import UploadRecord

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

THUMBNAIL_SIZE = (480, 480)
ORIENTATION_TAG = 0x0112  # EXIF
_PNG_MODES = {"1", "L", "LA", "RGB", "RGBA", "I;16", "I"}


class UploadTooLarge(ValidationError):
    """The upload is over RECONSTRUCT_MAX_UPLOAD_BYTES (the API answers 413)."""


class UploadRateLimited(ValidationError):
    """The account started RECONSTRUCT_UPLOADS_PER_HOUR reconstructions in the last hour (the API answers 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, code="rate_limited")
        self.retry_after = retry_after


RATE_WINDOW = timedelta(hours=1)


def reconstruction_rate_check(user: AbstractBaseUser) -> None:
    """Raise UploadRateLimited when ``user`` may not start another reconstruction now.

    Counted from the accepted uploads (UploadRecord, which every web process and Lambda instance shares, and
    which deleting a reconstruction does not touch) over a sliding hour. The limit keeps one account (or a
    leaked API token) from monopolising the workers. A quick check before the photo is read; the upload is
    counted by reconstruction_rate_consume.
    """
    limit = settings.RECONSTRUCT_UPLOADS_PER_HOUR
    if not limit or user.is_staff:
        return
    since = timezone.now() - RATE_WINDOW
    recent = UploadRecord.objects.filter(user=user, created_at__gte=since).order_by("-created_at")
    times = list(recent.values_list("created_at", flat=True)[:limit])
    if len(times) < limit:
        return
    # The oldest of the last `limit` uploads leaves the window first.
    retry_after = max(1, int((times[-1] + RATE_WINDOW - timezone.now()).total_seconds()) + 1)
    minutes = -(-retry_after // 60)
    raise UploadRateLimited(
        f"You have uploaded {limit} photos in the last hour, the most an account may. "
        f"Please try again in {minutes} minute{'s' if minutes != 1 else ''}.",
        retry_after,
    )


def reconstruction_rate_consume(user: AbstractBaseUser) -> UploadRecord | None:
    """Count one upload of ``user`` against the hourly limit, or raise UploadRateLimited; None when unlimited.

    The check and the count happen in one transaction that holds the account's row (SELECT ... FOR UPDATE on
    PostgreSQL; SQLite's IMMEDIATE transactions hold the whole database), so parallel uploads of one account
    never pass the limit together. Delete the returned record if the upload is then not kept after all.
    """
    if not settings.RECONSTRUCT_UPLOADS_PER_HOUR or user.is_staff:
        return None
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        reconstruction_rate_check(user)
        return UploadRecord.objects.create(user=user)


def upload_records_prune() -> int:
    """Forget uploads older than the limit's hour (the sweep calls this); returns how many were deleted."""
    return UploadRecord.objects.filter(created_at__lt=timezone.now() - RATE_WINDOW).delete()[0]


@dataclass(frozen=True)
class PreparedUpload:
    """A validated upload: the picture upright, metadata stripped, re-encoded; plus a thumbnail."""

    content: bytes
    extension: str
    format: str  # what the user sent (JPEG, PNG, ...)
    width: int
    height: int
    thumbnail: bytes  # JPEG
    name: str  # the user's file name, for display only


def size_text(n: int) -> str:
    """``n`` bytes for people ("4.5 MB"), with a plain space: JSON clients would see filesizeformat's "\\u00a0"."""
    return filesizeformat(n).replace("\xa0", " ")


def upload_size_error(size: int) -> str:
    """Why an upload of ``size`` bytes is refused, and what to do instead."""
    limit = settings.RECONSTRUCT_MAX_UPLOAD_BYTES
    return (
        f"The file is {size_text(size)}; the limit is {size_text(limit)}. "
        "Please upload a smaller photo (for example resized to 4000 pixels wide, or saved as JPEG)."
    )


def upload_prepare(uploaded: File) -> PreparedUpload:
    """Decode an uploaded file for real and return it normalised, or raise ValidationError.

    Checks, in order: byte size (before anything is decoded), that Pillow recognises the format,
    the pixel count (read from the header, before the pixels are decoded: a small file can hold a
    "decompression bomb"), a full decode (catches truncated or corrupt files), the smallest side.
    EXIF orientation is applied and metadata (camera, GPS position) dropped.
    """
    size = uploaded.size or 0
    if size > settings.RECONSTRUCT_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(upload_size_error(size), code="too_large")
    if size == 0:
        raise ValidationError("The file is empty. Please choose a photo.", code="empty")
    uploaded.seek(0)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below, with a clearer message than Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(uploaded)
            width, height = image.size
            pixels = width * height
            if pixels > settings.RECONSTRUCT_MAX_IMAGE_PIXELS:
                raise ValidationError(
                    f"The image is {width}x{height} pixels ({pixels / 1e6:.0f} megapixels); the limit is "
                    f"{settings.RECONSTRUCT_MAX_IMAGE_PIXELS / 1e6:.0f} megapixels. Please resize it and try again.",
                    code="too_many_pixels",
                )
            source_format = image.format or "?"
            image.load()
    except ValidationError:
        raise
    except Image.DecompressionBombError:
        raise ValidationError(
            "The image has too many pixels to process safely. Please resize it and try again.", code="too_many_pixels"
        ) from None
    except Image.UnidentifiedImageError:
        raise ValidationError(
            "This file is not an image we can read. Please upload a photo as JPEG, PNG or WebP.", code="not_an_image"
        ) from None
    except DECODE_ERRORS as error:
        raise ValidationError(
            f"The image could not be decoded; the file may be damaged or cut short ({error}). "
            "Please try another copy of the photo.",
            code="corrupt",
        ) from None
    smallest = settings.RECONSTRUCT_MIN_IMAGE_SIDE
    if min(width, height) < smallest:
        raise ValidationError(
            f"The image is only {width}x{height} pixels; it needs at least {smallest} pixels on each side.",
            code="too_small",
        )

    # A JPEG that needs no turning keeps its own quantisation tables (quality="keep"): no second
    # generation of compression artefacts and about the same size; a turned one is re-encoded.
    keep_jpeg = (
        source_format in ("JPEG", "MPO") and image.getexif().get(ORIENTATION_TAG, 1) == 1 and image.mode in ("RGB", "L")
    )
    if not keep_jpeg:
        image = ImageOps.exif_transpose(image)
    stored_format, extension = STORED_FORMATS.get(source_format, ("PNG", "png"))
    if stored_format == "JPEG":
        image = to_rgb(image)
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif stored_format == "PNG" and image.mode not in _PNG_MODES:
        image = to_rgb(image)
    elif stored_format == "WEBP" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    content = io.BytesIO()
    # Saved without the EXIF/XMP blocks: the stored original is upright and carries no location.
    if keep_jpeg:
        image.save(content, "JPEG", quality="keep")
    elif stored_format == "JPEG":
        image.save(content, "JPEG", quality=92)
    elif stored_format == "WEBP":
        image.save(content, "WEBP", quality=95)
    else:
        image.save(content, "PNG", compress_level=4)

    # resize() returns a new picture: thumbnail() would shrink an RGB upload in place (to_rgb returns it as is), and
    # the recorded size with it; a full-size copy first would cost another 300 MB for a 100-megapixel photo.
    thumb = to_rgb(image)
    scale = min(1.0, THUMBNAIL_SIZE[0] / thumb.width, THUMBNAIL_SIZE[1] / thumb.height)
    if scale < 1.0:
        size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        thumb = thumb.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    thumbnail = io.BytesIO()
    thumb.save(thumbnail, "JPEG", quality=85)

    name = Path(getattr(uploaded, "name", "") or "upload").name[:255]
    return PreparedUpload(
        content=content.getvalue(),
        extension=extension,
        format=source_format,
        width=image.width,
        height=image.height,
        thumbnail=thumbnail.getvalue(),
        name=name,
    )
