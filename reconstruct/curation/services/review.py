"""Staff review of the training set: approve, reject, say which way the car faces, flip.

A flip never touches a stored file: the mirrored pixels become a new version of the photo.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image

from reconstruct.curation import checks
from reconstruct.curation.models import DatasetImage
from reconstruct.curation.services.arrival import dataset_files_store
from reconstruct.images import STORED_FORMATS
from reconstruct.storage import storage_delete_keys

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

Status = DatasetImage.Status
Orientation = DatasetImage.Orientation


def _review(images: QuerySet[DatasetImage], user: AbstractBaseUser | None, **changes: Any) -> int:
    # Only current versions are reviewed: an older version of a flipped photo is history.
    return images.filter(is_current=True).update(reviewed_by=user, reviewed_at=timezone.now(), **changes)


def dataset_image_approve(*, images: QuerySet[DatasetImage], user: AbstractBaseUser | None) -> int:
    """Approve the current versions among ``images``; returns how many."""
    return _review(images, user, status=Status.APPROVED)


def dataset_image_reject(*, images: QuerySet[DatasetImage], user: AbstractBaseUser | None) -> int:
    """Reject the current versions among ``images``; returns how many."""
    return _review(images, user, status=Status.REJECTED)


def dataset_image_set_orientation(
    *, images: QuerySet[DatasetImage], orientation: str, user: AbstractBaseUser | None
) -> int:
    """Record which way the car faces in the current versions among ``images``; returns how many.

    Raises ValidationError for an orientation that is not one of DatasetImage.Orientation.
    """
    if orientation not in Orientation.values:
        raise ValidationError(f"unknown orientation {orientation!r}")
    return _review(images, user, orientation=orientation)


_MIRRORED = {
    Orientation.LEFT: Orientation.RIGHT,
    Orientation.RIGHT: Orientation.LEFT,
    Orientation.UNKNOWN: Orientation.UNKNOWN,
}


# A flip of a picture too large to decode whole is stored reduced, but never with a long side under this.
FLIP_MIN_LONG_SIDE = 1024


def _encode_like(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        image.save(out, "JPEG", quality=95, subsampling=0)
    elif fmt == "WEBP":
        image.save(out, "WEBP", lossless=True)
    else:
        image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def dataset_image_flip(*, image: DatasetImage, user: AbstractBaseUser | None) -> DatasetImage:
    """Mirror a current image horizontally; returns the version that is current afterwards.

    The stored file is never touched: the mirrored pixels become a new version (a child row with
    its own file), and the old version is kept but no longer current. Flipping back makes the
    original current again instead of re-encoding twice-mirrored pixels (no generation loss), and
    flipping an original again reuses its earlier flipped version.
    """
    image.refresh_from_db()
    if not image.is_current:
        raise ValidationError(f"#{image.pk} is an older version; flip the current one.")
    if image.derivation == "flip" and image.parent_id:
        target = image.parent
    else:
        target = image.versions.filter(derivation="flip").first()
    if target is not None:
        with transaction.atomic():
            DatasetImage.objects.filter(pk=image.pk).update(is_current=False)
            DatasetImage.objects.filter(pk=target.pk).update(
                is_current=True,
                status=image.status,
                orientation=_MIRRORED[Orientation(image.orientation)],
                reviewed_by=user,
                reviewed_at=timezone.now(),
            )
        target.refresh_from_db()
        return target

    with default_storage.open(image.file.name, "rb") as handle:
        data = handle.read()
    try:
        # Full size (within ml.decode's memory budget), as every path decodes: upright, 16-bit stretched, on
        # white, in sRGB; mirrored in the same pass.
        decoded = checks.decode_photo(data, settings.RECONSTRUCT_MAX_IMAGE_PIXELS, mirror=True)
    except checks.CheckError as error:
        raise ValidationError(f"#{image.pk} cannot be flipped: {error}") from None
    mirrored = decoded.image
    if decoded.reduced and max(mirrored.size) < FLIP_MIN_LONG_SIDE:
        # Decoded small to stay within the memory budget: a flipped version this small would be a poor copy.
        raise ValidationError(
            f"#{image.pk} is {decoded.width}x{decoded.height} pixels: too large to flip within the memory a "
            f"decode may take (it would be kept at {mirrored.width}x{mirrored.height}). Flip it before uploading."
        )
    flipped = _encode_like(mirrored, decoded.format)
    extension = STORED_FORMATS[decoded.format][1]
    written = dataset_files_store(data=flipped, extension=extension, picture=mirrored)
    try:
        with transaction.atomic():
            child = DatasetImage.objects.create(
                file=written[0],
                thumbnail=written[1],
                original_name=image.original_name,
                format=image.format,
                width=mirrored.width,
                height=mirrored.height,
                byte_size=len(flipped),
                status=image.status,
                source=image.source,
                orientation=_MIRRORED[Orientation(image.orientation)],
                added_by=user,
                reviewed_by=user,
                reviewed_at=timezone.now(),
                content_hash=checks.content_hash(flipped),
                # The mirrored file's hash as an arrival computes it; the other checks are the parent's.
                phash=checks.hash_to_hex(checks.examine(flipped, settings.RECONSTRUCT_MAX_IMAGE_PIXELS)[0].phash),
                near_duplicate_of=image.near_duplicate_of,
                near_duplicate_distance=image.near_duplicate_distance,
                near_duplicate_mirrored=image.near_duplicate_mirrored,
                too_small=image.too_small,
                greyscale=image.greyscale,
                extreme_aspect=image.extreme_aspect,
                car_likeness=image.car_likeness,
                car_likeness_model=image.car_likeness_model,
                parent=image,
                derivation="flip",
            )
            DatasetImage.objects.filter(pk=image.pk).update(is_current=False)
    except BaseException:
        storage_delete_keys(written)
        raise
    return child
