"""Photos arriving in the training set: checks, near-duplicate search, car-likeness, and storing them as pending.

Every way in ends in ``dataset_image_add``: the admin's bulk upload (files or a zip), the
``import_dataset`` command (a folder) and a user's donation of a reconstruction's photo.
"""

from __future__ import annotations

import logging
import lzma
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone
from PIL import Image

from ml import runtime
from reconstruct.curation import checks
from reconstruct.curation.models import DatasetImage
from reconstruct.images import display_name, sizes_text
from reconstruct.models import Reconstruction
from reconstruct.registry.services import model_version_load_active
from reconstruct.storage import storage_delete_keys

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Source = DatasetImage.Source

# Names in a zip that are never photos: folders, macOS resource forks, hidden files.
_ZIP_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")


def _too_large(size: int) -> str:
    have, most = sizes_text(size, settings.CURATION_MAX_IMAGE_BYTES)
    return f"the file is {have}; the limit is {most}"


def dataset_files_store(*, data: bytes, extension: str, picture: Image.Image) -> list[str]:
    """Write a photo's bytes under a fresh key and its admin thumbnail beside it; returns both keys.

    If the second write fails the first is removed, so nothing is left without an owner.
    """
    now = timezone.now()
    key = default_storage.save(f"dataset/{now:%Y/%m}/{uuid.uuid4().hex}.{extension}", ContentFile(data))
    try:
        thumb = default_storage.save(key.rsplit(".", 1)[0] + "-thumb.jpg", ContentFile(checks.thumbnail(picture)))
    except BaseException:
        storage_delete_keys([key])
        raise
    return [key, thumb]


# --- Arrival: checks and near-duplicate search -----------------------------------------------------


class NearDuplicateIndex:
    """The perceptual hashes of the current images, in memory, for a batch of arrivals.

    Loaded once per batch (one query), then each arrival is compared against all of them with one
    vectorised XOR + popcount, and added to the index so photos within the same batch are found too.
    """

    def __init__(self, ids: list[int], hashes: list[int]) -> None:
        self._ids = list(ids)
        self._hashes = np.array(hashes, dtype=np.uint64)
        self._pending: list[tuple[int, int]] = []

    @classmethod
    def load(cls) -> NearDuplicateIndex:
        rows = DatasetImage.objects.filter(is_current=True).values_list("id", "phash")
        ids, hashes = [], []
        for image_id, phash in rows:
            ids.append(image_id)
            hashes.append(int(phash, 16))
        return cls(ids, hashes)

    def add(self, image_id: int, value: int) -> None:
        self._pending.append((image_id, value))

    def _flush(self) -> None:
        if self._pending:
            self._ids.extend(i for i, _ in self._pending)
            self._hashes = np.concatenate([self._hashes, np.array([h for _, h in self._pending], dtype=np.uint64)])
            self._pending = []

    def closest(self, value: int, mirrored: int, limit: int) -> tuple[int, int, bool] | None:
        """``(image id, distance, matched mirrored)`` of the nearest hash within ``limit``, or None."""
        self._flush()
        if not self._ids:
            return None
        best = None
        for is_mirrored, candidate in ((False, value), (True, mirrored)):
            distances = checks.hamming_many(candidate, self._hashes)
            position = int(np.argmin(distances))
            distance = int(distances[position])
            if distance <= limit and (best is None or distance < best[1]):
                best = (self._ids[position], distance, is_mirrored)
        return best


@dataclass
class AddResult:
    """What happened to one arriving file."""

    name: str
    image: DatasetImage | None = None
    skipped: str = ""  # why it was not added, in words for a person
    duplicate_of: DatasetImage | None = None

    @property
    def added(self) -> bool:
        return self.image is not None

    def flags(self) -> list[str]:
        """The checks this photo failed, for the upload report."""
        image = self.image
        if image is None:
            return []
        found = []
        if image.near_duplicate_of_id:
            how = " (mirrored)" if image.near_duplicate_mirrored else ""
            found.append(
                f"near duplicate of #{image.near_duplicate_of_id}{how}, distance {image.near_duplicate_distance}"
            )
        if image.too_small:
            found.append(f"too small ({image.width}x{image.height})")
        if image.greyscale:
            found.append("greyscale")
        if image.extreme_aspect:
            found.append(f"extreme aspect ratio ({image.aspect:.2f}:1)")
        if image.car_likeness is not None and image.car_likeness < settings.CURATION_LOW_CAR_LIKENESS:
            found.append(f"does not look like a car (car-likeness {image.car_likeness:.2f})")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "added": self.added,
            "id": self.image.pk if self.image else None,
            "skipped": self.skipped,
            "duplicate_of": self.duplicate_of.pk if self.duplicate_of else None,
            "flags": self.flags(),
        }


@dataclass
class AddReport:
    """What happened to every file of one batch, in order; the upload page and import command show it."""

    results: list[AddResult] = field(default_factory=list)

    @property
    def added(self) -> list[AddResult]:
        return [r for r in self.results if r.added]

    @property
    def skipped(self) -> list[AddResult]:
        return [r for r in self.results if not r.added]

    @property
    def flagged(self) -> list[AddResult]:
        return [r for r in self.results if r.flags()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "skipped": len(self.skipped),
            "flagged": len(self.flagged),
            "results": [r.to_dict() for r in self.results],
        }


class CarLikenessScorer:
    """Car-likeness (ml.runtime.Model.car_likeness, in [0, 1]) from the active model, loaded once per batch;
    None when no model can be loaded or the model is not calibrated."""

    def __init__(self) -> None:
        self._loaded = False
        self.version: str = ""
        self.model: runtime.Model | None = None

    def __call__(self, image: Image.Image) -> float | None:
        if not self._loaded:
            self._loaded = True
            try:
                version, self.model = model_version_load_active()
                self.version = version.name
            except Exception:
                # Checks must not depend on the model being available: the score stays empty.
                logger.exception("no active model to score car-likeness")
        if self.model is None:
            return None
        try:
            return self.model.car_likeness(image)
        except ValueError:
            return None


def dataset_image_add(
    *,
    data: bytes,
    name: str,
    source: str,
    added_by: AbstractBaseUser | None = None,
    reconstruction: Reconstruction | None = None,
    index: NearDuplicateIndex | None = None,
    scorer: CarLikenessScorer | None = None,
) -> AddResult:
    """Check one photo and add it to the training set as pending, or say why it was skipped.

    Exact duplicates (same bytes) are skipped at once; everything else arrives with its checks
    computed. The file is written under a fresh key before the row exists, and removed again if
    the row cannot be created, so no row points at a missing file and no file is left unowned.
    """
    name = display_name(name, default="photo")
    if len(data) > settings.CURATION_MAX_IMAGE_BYTES:
        return AddResult(
            name,
            skipped=_too_large(len(data)),
        )
    digest = checks.content_hash(data)
    existing = DatasetImage.objects.filter(content_hash=digest).first()
    if existing is not None:
        return AddResult(name, skipped=f"exact duplicate of #{existing.pk}", duplicate_of=existing)
    try:
        facts, upright = checks.examine(data, max_pixels=settings.RECONSTRUCT_MAX_IMAGE_PIXELS)
    except checks.CheckError as error:
        return AddResult(name, skipped=str(error))

    index = index if index is not None else NearDuplicateIndex.load()
    scorer = scorer if scorer is not None else CarLikenessScorer()
    match = index.closest(facts.phash, facts.phash_mirrored, settings.CURATION_NEAR_DUPLICATE_DISTANCE)
    car_likeness = scorer(upright)

    written = dataset_files_store(data=data, extension=facts.extension, picture=upright)
    try:
        with transaction.atomic():
            image = DatasetImage.objects.create(
                file=written[0],
                thumbnail=written[1],
                original_name=name,
                format=facts.format,
                width=facts.width,
                height=facts.height,
                byte_size=len(data),
                source=source,
                added_by=added_by,
                content_hash=digest,
                phash=checks.hash_to_hex(facts.phash),
                near_duplicate_of_id=match[0] if match else None,
                near_duplicate_distance=match[1] if match else None,
                near_duplicate_mirrored=match[2] if match else False,
                too_small=checks.is_too_small(
                    facts.width, facts.height, settings.CURATION_MIN_WIDTH, settings.CURATION_MIN_HEIGHT
                ),
                greyscale=facts.greyscale,
                extreme_aspect=checks.is_extreme_aspect(
                    facts.width, facts.height, settings.CURATION_MIN_ASPECT, settings.CURATION_MAX_ASPECT
                ),
                car_likeness=car_likeness,
                car_likeness_model=scorer.version if car_likeness is not None else "",
                reconstruction=reconstruction,
            )
    except IntegrityError:
        # The same bytes (or the same donated reconstruction) arrived through another request meanwhile.
        storage_delete_keys(written)
        existing = DatasetImage.objects.filter(content_hash=digest).first()
        if existing is None and reconstruction is not None:
            existing = DatasetImage.objects.filter(reconstruction=reconstruction).first()
        return AddResult(name, skipped=f"exact duplicate of #{existing.pk if existing else '?'}", duplicate_of=existing)
    except BaseException:
        storage_delete_keys(written)
        raise
    index.add(image.pk, facts.phash)
    return AddResult(name, image=image)


# One arriving file: its name and a function returning its bytes (or raising CheckError saying why not).
Arrival = tuple[str, Callable[[], bytes]]


def dataset_image_add_many(
    *,
    arrivals: Iterable[Arrival],
    source: str,
    added_by: AbstractBaseUser | None = None,
    progress: Callable[[AddResult], None] | None = None,
) -> AddReport:
    """Add many photos (bulk upload, zip, folder import) with one near-duplicate index and one model."""
    report = AddReport()
    index = NearDuplicateIndex.load()
    scorer = CarLikenessScorer()
    for name, read in arrivals:
        try:
            data = read()
        except checks.CheckError as error:
            result = AddResult(display_name(name, default="photo"), skipped=str(error))
        except OSError as error:
            result = AddResult(
                display_name(name, default="photo"), skipped=f"could not be read ({error.strerror or error})"
            )
        else:
            result = dataset_image_add(
                data=data, name=name, source=source, added_by=added_by, index=index, scorer=scorer
            )
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def zip_member_name(member: zipfile.ZipInfo) -> str:
    """A member's path as its maker meant it: ``/`` between folders (zips made on Windows may use ``\\``), and
    UTF-8 when the bytes are valid UTF-8 although the UTF-8 flag is unset (zips made by macOS's Archive Utility;
    Python then reads them as CP437, giving ``K\u251c\u00f1fer.jpg`` for ``K\u00e4fer.jpg``)."""
    name = member.filename
    if not member.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name.replace("\\", "/")


def zip_arrivals(archive: IO[bytes]) -> Iterator[Arrival]:
    """The photos in a zip file, read one at a time (the archive is never unpacked whole).

    Members larger than the per-image limit are refused from their header before any byte is
    inflated, which also defuses zip bombs; folders and system files are left out. A member that
    cannot be unpacked (a damaged deflate or LZMA stream, a CRC mismatch, encryption) is reported as
    skipped and the others are read.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise ValidationError("The zip file is damaged or not a zip file.") from None
    members = []
    for member in zf.infolist():
        name = zip_member_name(member)
        if member.is_dir() or name.endswith("/") or any(junk in name for junk in _ZIP_JUNK):
            continue
        if name.rsplit("/", 1)[-1].startswith("."):
            continue
        members.append((name, member))
    if len(members) > settings.CURATION_MAX_ZIP_MEMBERS:
        raise ValidationError(
            f"The zip holds {len(members)} files; the limit is {settings.CURATION_MAX_ZIP_MEMBERS}. Split it, "
            "or put the photos in a folder on the server and use `python manage.py import_dataset`."
        )
    for name, member in members:
        yield name, _zip_reader(zf, member)


ZIP_MEMBER_DAMAGED = "damaged: its compressed data in the zip is broken, so it was skipped; the other files were read"
ZIP_MEMBER_ENCRYPTED = (
    "encrypted: the zip protects it with a password, so it was skipped; zip the photos again without a password"
)
ZIP_MEMBER_METHOD = (
    "packed with a compression method this site cannot unpack (method {}), so it was skipped; zip the photos again "
    "with the usual method (deflate)"
)
# What reading a member raises when its compressed data is damaged: zlib (deflate), lzma, bz2 (OSError),
# zipfile's CRC check (BadZipFile), encryption (RuntimeError), an unknown method (NotImplementedError).
_ZIP_MEMBER_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    NotImplementedError,
)


def _zip_reader(zf: zipfile.ZipFile, member: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        if member.file_size > settings.CURATION_MAX_IMAGE_BYTES:
            raise checks.CheckError(_too_large(member.file_size), "too_large")
        try:
            # Read at most one byte past the limit: a header that lies about the size cannot inflate more.
            with zf.open(member) as handle:
                data = handle.read(settings.CURATION_MAX_IMAGE_BYTES + 1)
        except NotImplementedError:  # a RuntimeError too: checked first
            raise checks.CheckError(ZIP_MEMBER_METHOD.format(member.compress_type), "unsupported_compression") from None
        except RuntimeError:  # encrypted
            raise checks.CheckError(ZIP_MEMBER_ENCRYPTED, "encrypted") from None
        except _ZIP_MEMBER_ERRORS as error:
            logger.info("zip member %r is damaged: %s", member.filename, error)
            raise checks.CheckError(ZIP_MEMBER_DAMAGED, "damaged") from None
        if len(data) > settings.CURATION_MAX_IMAGE_BYTES:
            raise checks.CheckError(_too_large(len(data)) + " once unpacked", "too_large")
        return data

    return read


def folder_arrivals(folder: Path, *, recursive: bool = False) -> list[Arrival]:
    """The image files in ``folder`` (by extension), sorted so an import is reproducible."""
    from ml.data import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    paths = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    return [(str(p.relative_to(folder)), p.read_bytes) for p in files]


def dataset_image_donate(*, reconstruction: Reconstruction, user: AbstractBaseUser) -> AddResult:
    """A user offers the photo behind one of their reconstructions to the training set.

    Idempotent per reconstruction: a second offer returns the image the first one created. The
    caller checks ownership (the view answers 404 for someone else's reconstruction).
    """
    existing = DatasetImage.objects.filter(reconstruction=reconstruction).first()
    if existing is not None:
        return AddResult(existing.original_name, image=existing)
    if not reconstruction.original:
        raise ValidationError("This reconstruction has no photo to offer.")
    with default_storage.open(reconstruction.original.name, "rb") as handle:
        data = handle.read()
    return dataset_image_add(
        data=data,
        name=reconstruction.original_name or Path(reconstruction.original.name).name,
        source=Source.DONATED,
        added_by=user,
        reconstruction=reconstruction,
    )
