"""Uploads: the hourly limit per account, and the real decode that turns an uploaded file into a stored original.

``upload_prepare`` is where an upload is validated: byte size, format, pixel count, a full decode, smallest side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.db import transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from ml.decode import DecodedImage, ImageDecodeError, image_decode
from reconstruct.images import UPLOAD_FORMATS, display_name, original_for_storage, sizes_text, thumbnail_jpeg
from reconstruct.models import UploadRecord

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

THUMBNAIL_SIZE = (480, 480)
# The upload is decoded for its thumbnail at no less than twice the thumbnail's size, as Pillow's own
# ``Image.thumbnail`` drafts a JPEG (``reducing_gap=2.0``), not ml.decode's default three times: a 12-megapixel
# JPEG decodes at 1/4 instead of 1/2, and upload_prepare takes 23 instead of 29 ms of CPU (README, stop 25).
THUMBNAIL_REDUCING_GAP = 2.0


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
    # The thumbnail's decode, when ``content`` is the file's own compressed picture (so it decodes to the same
    # pixels): sync mode hands it to ml.framing.photo_reconstruct, whose first decode of a large photo it is (the
    # thumbnail's 480 pixels x 2 = the working fit's 320 x 3), instead of decoding the photo a second time.
    decoded: DecodedImage | None = field(default=None, repr=False, compare=False)


def size_text(n: int) -> str:
    """``n`` bytes for people ("4.5 MB"), with a plain space: JSON clients would see filesizeformat's "\\u00a0"."""
    return filesizeformat(n).replace("\xa0", " ")


def upload_size_error(size: int) -> str:
    """Why an upload of ``size`` bytes is refused, and what to do instead."""
    have, most = sizes_text(size, settings.RECONSTRUCT_MAX_UPLOAD_BYTES)
    return (
        f"The file is {have}; the limit is {most}. "
        "Please upload a smaller photo (for example resized to 4000 pixels wide, or saved as JPEG)."
    )


def upload_prepare(uploaded: File) -> PreparedUpload:
    """Decode an uploaded file for real and return it normalised, or raise ValidationError.

    Checks, in order: byte size (before anything is decoded), then ``ml.decode.image_decode``: a format of
    UPLOAD_FORMATS, the pixel count (from the header, before the pixels are decoded: a small file can hold a
    "decompression bomb"), a decode of the first frame (catches truncated or corrupt files), the smallest side.
    The stored original carries no metadata (camera, GPS position) and is upright; it is the file's own bytes
    when nothing has to change (reconstruct/images.py: original_for_storage). ValidationError's ``code`` is
    ImageDecodeError's (``not_an_image``, ``corrupt``, ...), or ``too_large`` / ``empty``.
    """
    size = uploaded.size or 0
    if size > settings.RECONSTRUCT_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(upload_size_error(size), code="too_large")
    uploaded.seek(0)
    data = uploaded.read(settings.RECONSTRUCT_MAX_UPLOAD_BYTES + 1)
    if len(data) > settings.RECONSTRUCT_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(upload_size_error(max(size, len(data))), code="too_large")
    max_pixels = settings.RECONSTRUCT_MAX_IMAGE_PIXELS
    try:
        decoded = image_decode(
            data,
            max_pixels=max_pixels,
            formats=UPLOAD_FORMATS,
            reduce_to=THUMBNAIL_SIZE,
            reducing_gap=THUMBNAIL_REDUCING_GAP,
            min_side=settings.RECONSTRUCT_MIN_IMAGE_SIDE,
        )
        stored = original_for_storage(data, decoded, max_pixels=max_pixels)
    except ImageDecodeError as problem:
        raise ValidationError(problem.message, code=problem.code) from None
    name = display_name(getattr(uploaded, "name", "") or "")
    return PreparedUpload(
        content=stored.content,
        extension=stored.extension,
        format=decoded.format,
        width=stored.size[0],
        height=stored.size[1],
        thumbnail=thumbnail_jpeg(decoded.image, THUMBNAIL_SIZE),
        name=name,
        decoded=decoded if stored.copied else None,
    )
