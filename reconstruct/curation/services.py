"""The work of curation: adding photos to the training set, reviewing them, freezing and exporting
the approved set, training runs, and comparing / activating / rolling back model versions.

The admin, the import command, the donation view and the Celery task are thin adapters around
these functions. Model activation itself is the site's (reconstruct.services.model_version_activate).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import uuid
import zipfile
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
from django.db.models import QuerySet
from django.utils import timezone
from kombu.exceptions import OperationalError as QueueError
from PIL import Image, ImageOps

from ml import runtime
from reconstruct import services as site_services
from reconstruct.curation import checks
from reconstruct.curation.models import DatasetImage, DatasetSnapshot, DatasetSnapshotItem, TrainingRun
from reconstruct.models import ModelActivation, ModelVersion, Reconstruction

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Status = DatasetImage.Status
Source = DatasetImage.Source
Orientation = DatasetImage.Orientation

# Names in a zip that are never photos: folders, macOS resource forks, hidden files.
_ZIP_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")


def storage_delete_keys(keys: Iterable[str]) -> None:
    for key in keys:
        try:
            default_storage.delete(key)
        except Exception:  # a leftover file is harmless; failing the caller because of it is not
            logger.exception("could not delete %s from storage", key)


def _too_large(size: int) -> str:
    return f"the file is {size / 1e6:.1f} MB, over the {settings.CURATION_MAX_IMAGE_BYTES / 1e6:.0f} MB limit"


def _new_key(extension: str) -> str:
    now = timezone.now()
    return f"dataset/{now:%Y/%m}/{uuid.uuid4().hex}.{extension}"


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


class Scorer:
    """Car-likeness from the active model, loaded once per batch; None when no model can be loaded."""

    def __init__(self) -> None:
        self._loaded = False
        self.version: str = ""
        self.model: runtime.Model | None = None

    def __call__(self, image: Image.Image) -> float | None:
        if not self._loaded:
            self._loaded = True
            try:
                version, self.model = site_services.model_version_load_active()
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
    data: bytes,
    *,
    name: str,
    source: str,
    added_by: AbstractBaseUser | None = None,
    reconstruction: Reconstruction | None = None,
    index: NearDuplicateIndex | None = None,
    scorer: Scorer | None = None,
) -> AddResult:
    """Check one photo and add it to the training set as pending, or say why it was skipped.

    Exact duplicates (same bytes) are skipped at once; everything else arrives with its checks
    computed. The file is written under a fresh key before the row exists, and removed again if
    the row cannot be created, so no row points at a missing file and no file is left unowned.
    """
    name = Path(name or "photo").name[:255]
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
    scorer = scorer if scorer is not None else Scorer()
    match = index.closest(facts.phash, facts.phash_mirrored, settings.CURATION_NEAR_DUPLICATE_DISTANCE)
    car_likeness = scorer(upright)

    written: list[str] = []
    try:
        written.append(default_storage.save(_new_key(facts.extension), ContentFile(data)))
        written.append(
            default_storage.save(written[0].rsplit(".", 1)[0] + "-thumb.jpg", ContentFile(checks.thumbnail(upright)))
        )
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
    arrivals: Iterable[Arrival],
    *,
    source: str,
    added_by: AbstractBaseUser | None = None,
    progress: Callable[[AddResult], None] | None = None,
) -> AddReport:
    """Add many photos (bulk upload, zip, folder import) with one near-duplicate index and one model."""
    report = AddReport()
    index = NearDuplicateIndex.load()
    scorer = Scorer()
    for name, read in arrivals:
        try:
            data = read()
        except checks.CheckError as error:
            result = AddResult(Path(name).name, skipped=str(error))
        except OSError as error:
            result = AddResult(Path(name).name, skipped=f"could not be read ({error.strerror or error})")
        else:
            result = dataset_image_add(data, name=name, source=source, added_by=added_by, index=index, scorer=scorer)
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def zip_arrivals(archive: IO[bytes]) -> Iterator[Arrival]:
    """The photos in a zip file, read one at a time (the archive is never unpacked whole).

    Members larger than the per-image limit are refused from their header before any byte is
    inflated, which also defuses zip bombs; folders and system files are left out.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise ValidationError("The zip file is damaged or not a zip file.") from None
    members = [
        m
        for m in zf.infolist()
        if not m.is_dir()
        and not any(junk in m.filename for junk in _ZIP_JUNK)
        and not Path(m.filename).name.startswith(".")
    ]
    if len(members) > settings.CURATION_MAX_ZIP_MEMBERS:
        raise ValidationError(
            f"The zip holds {len(members)} files; the limit is {settings.CURATION_MAX_ZIP_MEMBERS}. Split it, "
            "or put the photos in a folder on the server and use `python manage.py import_dataset`."
        )
    for member in members:
        yield member.filename, _zip_reader(zf, member)


def _zip_reader(zf: zipfile.ZipFile, member: zipfile.ZipInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        if member.file_size > settings.CURATION_MAX_IMAGE_BYTES:
            raise checks.CheckError(_too_large(member.file_size))
        try:
            # Read at most one byte past the limit: a header that lies about the size cannot inflate more.
            with zf.open(member) as handle:
                data = handle.read(settings.CURATION_MAX_IMAGE_BYTES + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError) as error:
            raise checks.CheckError(f"could not be unpacked from the zip ({error})") from None
        if len(data) > settings.CURATION_MAX_IMAGE_BYTES:
            raise checks.CheckError("the file is over the size limit once unpacked")
        return data

    return read


def folder_arrivals(folder: Path, recursive: bool = False) -> list[Arrival]:
    """The image files in ``folder`` (by extension), sorted so an import is reproducible."""
    from ml.data import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    paths = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    return [(str(p.relative_to(folder)), p.read_bytes) for p in files]


def dataset_image_donate(reconstruction: Reconstruction, user: AbstractBaseUser) -> AddResult:
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
        data,
        name=reconstruction.original_name or Path(reconstruction.original.name).name,
        source=Source.DONATED,
        added_by=user,
        reconstruction=reconstruction,
    )


# --- Review ----------------------------------------------------------------------------------------


def _review(images: QuerySet[DatasetImage], user: AbstractBaseUser | None, **changes: Any) -> int:
    # Only current versions are reviewed: an older version of a flipped photo is history.
    return images.filter(is_current=True).update(reviewed_by=user, reviewed_at=timezone.now(), **changes)


def dataset_image_approve(images: QuerySet[DatasetImage], user: AbstractBaseUser | None) -> int:
    """Approve the current versions among ``images``; returns how many."""
    return _review(images, user, status=Status.APPROVED)


def dataset_image_reject(images: QuerySet[DatasetImage], user: AbstractBaseUser | None) -> int:
    return _review(images, user, status=Status.REJECTED)


def dataset_image_set_orientation(
    images: QuerySet[DatasetImage], orientation: str, user: AbstractBaseUser | None
) -> int:
    if orientation not in Orientation.values:
        raise ValidationError(f"unknown orientation {orientation!r}")
    return _review(images, user, orientation=orientation)


_MIRRORED = {
    Orientation.LEFT: Orientation.RIGHT,
    Orientation.RIGHT: Orientation.LEFT,
    Orientation.UNKNOWN: Orientation.UNKNOWN,
}


def _encode_like(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        image.convert("RGB").save(out, "JPEG", quality=95, subsampling=0)
    elif fmt == "WEBP":
        image.save(out, "WEBP", lossless=True)
    else:
        image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def dataset_image_flip(image: DatasetImage, user: AbstractBaseUser | None) -> DatasetImage:
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
    facts, upright = checks.examine(data, max_pixels=settings.RECONSTRUCT_MAX_IMAGE_PIXELS)
    mirrored = ImageOps.mirror(upright)
    flipped = _encode_like(mirrored, facts.format)
    extension = checks.STORED_FORMATS[facts.format]
    written: list[str] = []
    try:
        written.append(default_storage.save(_new_key(extension), ContentFile(flipped)))
        written.append(
            default_storage.save(written[0].rsplit(".", 1)[0] + "-thumb.jpg", ContentFile(checks.thumbnail(mirrored)))
        )
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
                # The parent's hashes mirrored: the same picture, so the same checks.
                phash=checks.hash_to_hex(facts.phash_mirrored),
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


# --- Snapshots and export --------------------------------------------------------------------------


def dataset_approved() -> QuerySet[DatasetImage]:
    """The training set: current versions that staff approved."""
    return DatasetImage.objects.filter(is_current=True, status=Status.APPROVED).order_by("id")


def _manifest_digest(rows: Iterable[tuple[int, str, str]]) -> str:
    digest = hashlib.sha256()
    for image_id, content_hash, orientation in rows:
        digest.update(f"{image_id}:{content_hash}:{orientation}\n".encode())
    return digest.hexdigest()


def dataset_snapshot_create(user: AbstractBaseUser | None, note: str = "") -> DatasetSnapshot:
    """Freeze the approved set into an immutable manifest (ids, storage keys, hashes, orientation)."""
    with transaction.atomic():
        images = list(dataset_approved().values_list("id", "file", "content_hash", "orientation", "source"))
        if not images:
            raise ValidationError("There are no approved images yet: approve some photos first.")
        snapshot = DatasetSnapshot.objects.create(
            created_by=user,
            note=note[:200],
            image_count=len(images),
            manifest_sha256=_manifest_digest((i, h, o) for i, _, h, o, _ in images),
        )
        DatasetSnapshotItem.objects.bulk_create(
            [
                DatasetSnapshotItem(
                    snapshot=snapshot, image_id=i, file_key=key, content_hash=h, orientation=o, source=s
                )
                for i, key, h, o, s in images
            ],
            batch_size=500,
        )
    return snapshot


@dataclass(frozen=True)
class ManifestRow:
    image_id: int
    file_key: str
    content_hash: str
    orientation: str
    source: str

    @property
    def archive_name(self) -> str:
        extension = self.file_key.rsplit(".", 1)[-1]
        return f"images/{self.image_id:06d}-{self.content_hash[:12]}.{extension}"


def dataset_manifest(snapshot: DatasetSnapshot | None = None) -> list[ManifestRow]:
    """The rows of a snapshot, or of the approved set as it is now."""
    if snapshot is not None:
        rows = snapshot.items.order_by("image_id").values_list(
            "image_id", "file_key", "content_hash", "orientation", "source"
        )
    else:
        rows = dataset_approved().values_list("id", "file", "content_hash", "orientation", "source")
    return [ManifestRow(*row) for row in rows]


def dataset_export_zip(out: IO[bytes], snapshot: DatasetSnapshot | None = None) -> int:
    """Write the approved set (or a snapshot) to ``out`` as a zip: images/, manifest.csv, manifest.json.

    Each photo is copied from storage into the archive in chunks, so memory stays flat however
    large the set; photos are stored uncompressed (JPEG does not compress further). Returns the
    number of images.
    """
    rows = dataset_manifest(snapshot)
    manifest = [
        {
            "file": row.archive_name,
            "sha256": row.content_hash,
            "orientation": row.orientation,
            "source": row.source,
            "id": row.image_id,
        }
        for row in rows
    ]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for row in rows:
            with (
                default_storage.open(row.file_key, "rb") as source,
                zf.open(row.archive_name, "w", force_zip64=True) as target,
            ):
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    target.write(chunk)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["file", "sha256", "orientation", "source", "id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(manifest)
        zf.writestr("manifest.csv", text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        described = {
            "exported_at": timezone.now().isoformat(timespec="seconds"),
            "snapshot": snapshot.pk if snapshot else None,
            "manifest_sha256": _manifest_digest((r.image_id, r.content_hash, r.orientation) for r in rows),
            "images": manifest,
        }
        zf.writestr("manifest.json", json.dumps(described, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(
            "README.txt",
            "Training photos exported from carsite. Orientation says which way the car faces (left is canonical).\n"
            "Train on them elsewhere with:  python -m ml.train --data images --out runs/reproduced "
            "--config ml/configs/default.json\n",
        )
    return len(rows)


# --- The model registry ----------------------------------------------------------------------------


def model_version_rollback(user: AbstractBaseUser | None, note: str = "") -> ModelActivation:
    """Activate the version that the latest activation replaced."""
    latest = ModelActivation.objects.select_related("previous").first()
    if latest is None or latest.previous is None:
        raise ValidationError("There is no earlier model version to roll back to.")
    return site_services.model_version_activate(
        latest.previous, user, note=note or f"Rolled back from {latest.version.name}."
    )


# --- Training runs ---------------------------------------------------------------------------------


def training_config_names() -> list[str]:
    """The configs staff can choose from: ml/configs/*.json (CURATION_TRAINING_CONFIG_DIR)."""
    return sorted(p.stem for p in Path(settings.CURATION_TRAINING_CONFIG_DIR).glob("*.json"))


def training_config_load(name: str, epochs: int | None = None) -> dict[str, Any]:
    """The named config as a dict (ml.config.TrainConfig layout), with ``epochs`` overridden."""
    from ml.config import TrainConfig

    if name not in training_config_names():
        raise ValidationError(f"Unknown training config {name!r}; choose one of {', '.join(training_config_names())}.")
    try:
        config = TrainConfig.load(Path(settings.CURATION_TRAINING_CONFIG_DIR) / f"{name}.json")
    except (ValueError, TypeError, KeyError) as error:
        raise ValidationError(f"The training config {name!r} is not valid: {error}") from None
    if epochs is not None:
        if epochs < 1:
            raise ValidationError("Epochs must be at least 1.")
        config = config.replace(epochs=epochs)
    return config.to_dict()


def training_run_start(
    user: AbstractBaseUser | None, config_name: str, epochs: int | None = None, note: str = ""
) -> TrainingRun:
    """Freeze the approved set and queue a training run on the ``training`` queue."""
    config = training_config_load(config_name, epochs)
    approved = dataset_approved().count()
    if approved < settings.CURATION_MIN_TRAINING_IMAGES:
        raise ValidationError(
            f"Training needs at least {settings.CURATION_MIN_TRAINING_IMAGES} approved photos; there are {approved}."
        )
    with transaction.atomic():
        snapshot = dataset_snapshot_create(user, note=note or f"for a {config_name} training run")
        run = TrainingRun.objects.create(
            snapshot=snapshot, config_name=config_name, config=config, epochs=config["epochs"], created_by=user
        )
        pk = run.pk
        transaction.on_commit(lambda: training_run_dispatch(pk))
    return run


def training_run_dispatch(run_id: int) -> None:
    from reconstruct.curation.tasks import training_run_execute_task

    try:
        training_run_execute_task.delay(run_id)
    except (QueueError, OSError) as error:
        logger.exception("could not queue training run %s", run_id)
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.FAILED,
            error=f"The run could not be queued: the message broker is unreachable ({error}). Is Redis running?",
            finished_at=timezone.now(),
        )


def training_run_is_stalled(run: TrainingRun) -> bool:
    """Running, but its worker has not written a heartbeat for a while (it was killed or lost)."""
    if run.status != TrainingRun.Status.RUNNING or run.heartbeat_at is None:
        return False
    return (timezone.now() - run.heartbeat_at).total_seconds() > TRAINING_STALE_SECONDS


def training_run_cancel(run: TrainingRun, user: AbstractBaseUser | None) -> TrainingRun:
    """Stop a run: a queued (or stalled) one at once; a running one at its worker's next batch."""
    now = timezone.now()
    who = f" by {user}" if user is not None else ""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            return run
        if run.status == TrainingRun.Status.QUEUED or training_run_is_stalled(run):
            run.status = TrainingRun.Status.CANCELLED
            run.error = f"Cancelled{who} before it finished."
            run.finished_at = now
            run.phase = ""
        run.cancel_requested = True
        run.save(update_fields=["status", "error", "finished_at", "phase", "cancel_requested"])
    return run


# A worker writes a heartbeat every few seconds; a run silent for this long has lost its worker.
TRAINING_HEARTBEAT_SECONDS = 5.0
TRAINING_STALE_SECONDS = 60.0
# A run whose worker died this many times is failed instead of being resumed again.
TRAINING_MAX_ATTEMPTS = 3


def training_run_execute(run_id: int) -> TrainingRun | None:
    """Run a queued training run to the end (the ``training`` Celery task; needs torch).

    Copies the snapshot's photos from storage, trains with ml.train (progress and cancellation
    through the row), exports and evaluates the best checkpoint, and registers a model version.
    Idempotent: a finished run is left alone, and a run whose worker died is resumed from its last
    checkpoint. See reconstruct/curation/runner.py.
    """
    from reconstruct.curation import runner

    return runner.execute(run_id)


# --- Comparing model versions ----------------------------------------------------------------------


def _data_uri(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def comparison_images(a: ModelVersion, b: ModelVersion, sample: int) -> tuple[list[DatasetImage], str]:
    """The photos to compare two versions on, and where they come from.

    The validation split of the newer trained version (never seen in its training), else of the
    other one, else the first approved photos.
    """
    for version in sorted((a, b), key=lambda v: v.created_at, reverse=True):
        run = TrainingRun.objects.filter(model_version=version).first()
        if run is not None and run.val_image_ids:
            ids = run.val_image_ids[:sample]
            found = {i.pk: i for i in DatasetImage.objects.filter(pk__in=ids)}
            images = [found[i] for i in ids if i in found]
            if images:
                return images, f"validation photos of {version.name} (training run #{run.pk})"
    images = list(dataset_approved()[:sample])
    if images:
        return images, "the first approved photos (neither version records a validation split)"
    return list(DatasetImage.objects.filter(is_current=True).order_by("id")[:sample]), "the first photos in the dataset"


def model_version_compare(a: ModelVersion, b: ModelVersion, sample: int = 8) -> dict[str, Any]:
    """Run both versions on the same photos: pictures side by side and mean scores.

    Returns ``{"images": [...], "source": str, "means": {name: {metric: value}}, "rows": [...]}``
    where each row holds the photo and both reconstructions as data: URIs, with their scores.
    """
    from ml.preprocess import enlarge

    images, source = comparison_images(a, b, sample)
    models = {v.pk: runtime.load_model(site_services.model_version_local_dir(v)) for v in (a, b)}
    rows = []
    totals: dict[int, dict[str, list[float]]] = {a.pk: {}, b.pk: {}}
    for image in images:
        with default_storage.open(image.file.name, "rb") as handle:
            data = handle.read()
        photo = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        photo.thumbnail((256, 256), Image.Resampling.LANCZOS)
        row: dict[str, Any] = {"image": image, "input": _data_uri(photo), "results": []}
        for version in (a, b):
            try:
                result = models[version.pk].reconstruct(io.BytesIO(data))
            except ValueError as error:
                row["results"].append({"error": str(error)})
                continue
            scores = result.scores.to_dict()
            for key, value in scores.items():
                if value is not None:
                    totals[version.pk].setdefault(key, []).append(value)
            row["results"].append({"picture": _data_uri(enlarge(result.reconstruction, 256)), "scores": scores})
        rows.append(row)
    means = {
        version.pk: {key: float(np.mean(values)) for key, values in totals[version.pk].items()} for version in (a, b)
    }
    return {"rows": rows, "source": source, "means": means, "count": len(images)}
