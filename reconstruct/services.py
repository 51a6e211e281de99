"""The work of the site: uploads, reconstructions, API tokens and the model registry.

Views, the API, admin actions and Celery tasks are thin adapters around these functions.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from kombu.exceptions import OperationalError as QueueError
from PIL import Image, ImageOps

from ml import runtime
from ml.preprocess import to_rgb
from reconstruct.models import ApiToken, ModelActivation, ModelVersion, Reconstruction

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Status = Reconstruction.Status

THUMBNAIL_SIZE = (480, 480)
ORIENTATION_TAG = 0x0112  # EXIF
# Formats a browser shows as they are; anything else Pillow reads (BMP, TIFF, GIF...) is stored as PNG.
_STORED_FORMATS = {"JPEG": ("JPEG", "jpg"), "MPO": ("JPEG", "jpg"), "PNG": ("PNG", "png"), "WEBP": ("WEBP", "webp")}
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

    Counted from the reconstructions table, which every web process and Lambda instance shares, over a sliding
    hour. The limit keeps one account (or a leaked API token) from monopolising the workers.
    """
    limit = settings.RECONSTRUCT_UPLOADS_PER_HOUR
    if not limit or user.is_staff:
        return
    since = timezone.now() - RATE_WINDOW
    recent = Reconstruction.objects.filter(owner=user, created_at__gte=since).order_by("-created_at")
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


# --- Uploads ---------------------------------------------------------------------------------------


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


def upload_size_error(size: int) -> str:
    limit = settings.RECONSTRUCT_MAX_UPLOAD_BYTES
    # filesizeformat joins number and unit with a no-break space; JSON clients would see "\u00a0".
    size_text, limit_text = (filesizeformat(n).replace("\xa0", " ") for n in (size, limit))
    return (
        f"The file is {size_text}; the limit is {limit_text}. "
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
    except (OSError, SyntaxError, EOFError, ValueError, IndexError) as error:
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
    stored_format, extension = _STORED_FORMATS.get(source_format, ("PNG", "png"))
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


# --- Reconstructions -------------------------------------------------------------------------------


def _reconstruction_prefix(owner_id: int, public_id: uuid.UUID) -> str:
    return f"reconstructions/{owner_id}/{public_id}"


def _delete_keys(keys: list[str]) -> None:
    for key in keys:
        try:
            default_storage.delete(key)
        except Exception:  # a leftover file is harmless; a failed request because of it is not
            logger.exception("could not delete %s from storage", key)


def reconstruction_create(user: AbstractBaseUser, upload: File | PreparedUpload) -> Reconstruction:
    """Store an upload and queue its reconstruction; returns the new row (pending, or finished in sync mode).

    Raises ValidationError for a file that is not a usable image (UploadRateLimited, a subclass, over the
    hourly limit). The files are written before the row exists, so a row never points at a missing file;
    the job is queued only once the row is committed, so a worker never looks for a row that is not there yet.
    """
    reconstruction_rate_check(user)
    prepared = upload if isinstance(upload, PreparedUpload) else upload_prepare(upload)
    public_id = uuid.uuid4()
    prefix = _reconstruction_prefix(user.pk, public_id)
    written: list[str] = []
    try:
        written.append(default_storage.save(f"{prefix}/original.{prepared.extension}", ContentFile(prepared.content)))
        written.append(default_storage.save(f"{prefix}/thumbnail.jpg", ContentFile(prepared.thumbnail)))
        reconstruction = Reconstruction.objects.create(
            uuid=public_id,
            owner=user,
            status=Status.PENDING,
            original=written[0],
            thumbnail=written[1],
            original_name=prepared.name,
            original_format=prepared.format[:10],
            width=prepared.width,
            height=prepared.height,
        )
    except BaseException:
        _delete_keys(written)
        raise
    pk = reconstruction.pk
    if settings.RECONSTRUCT_MODE == "sync":
        # In this process and on this database connection: the row is visible, commit or not.
        reconstruction_run(pk)
        reconstruction.refresh_from_db()
    else:
        # Runs at once outside a transaction, or after the caller's transaction commits.
        transaction.on_commit(lambda: reconstruction_dispatch(pk))
    return reconstruction


def reconstruction_dispatch(reconstruction_id: int) -> None:
    """Run the reconstruction now (sync mode) or queue it for a Celery worker."""
    if settings.RECONSTRUCT_MODE == "sync":
        reconstruction_run(reconstruction_id)
        return
    from reconstruct.tasks import reconstruction_run_task

    try:
        reconstruction_run_task.delay(reconstruction_id)
    except (QueueError, OSError) as error:
        logger.error("could not queue reconstruction %s: %s", reconstruction_id, error)
        Reconstruction.objects.filter(pk=reconstruction_id, status=Status.PENDING).update(
            status=Status.FAILED,
            error="The job queue is not reachable, so the reconstruction could not start. "
            "Please press “Try again” in a minute; if it keeps failing, the site's Redis server is down.",
            finished_at=timezone.now(),
        )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _reconstruction_fail(reconstruction_id: int, attempt: int, message: str) -> None:
    Reconstruction.objects.filter(pk=reconstruction_id, status=Status.RUNNING, attempts=attempt).update(
        status=Status.FAILED, error=message, finished_at=timezone.now()
    )


def reconstruction_run(reconstruction_id: int) -> Reconstruction | None:
    """Reconstruct one upload with the active model; idempotent, safe to run twice or after a crash.

    A finished row (done or failed) is left alone. Each run claims the row by incrementing
    ``attempts`` and writes its PNGs under fresh keys before one UPDATE references them all, and
    only if the row is still this attempt's: a crash leaves at most unreferenced files, never a
    half result, and of two overlapping runs only the later one's files stay referenced.
    Returns the row, or None if it was deleted meanwhile.
    """
    with transaction.atomic():
        reconstruction = Reconstruction.objects.select_for_update().filter(pk=reconstruction_id).first()
        if reconstruction is None:
            logger.info("reconstruction %s was deleted before it ran", reconstruction_id)
            return None
        if reconstruction.is_finished:
            return reconstruction
        if reconstruction.attempts >= settings.RECONSTRUCT_MAX_ATTEMPTS:
            # Each earlier attempt died with its worker (acks_late redelivered the job): stop here
            # rather than let one poisonous image kill workers forever.
            reconstruction.status = Status.FAILED
            reconstruction.error = (
                f"The reconstruction was interrupted {reconstruction.attempts} times (its worker stopped), "
                "so we gave up. Please try again, or try a smaller photo."
            )
            reconstruction.finished_at = timezone.now()
            reconstruction.save(update_fields=["status", "error", "finished_at"])
            return reconstruction
        reconstruction.status = Status.RUNNING
        reconstruction.attempts = F("attempts") + 1
        reconstruction.started_at = timezone.now()
        reconstruction.save(update_fields=["status", "attempts", "started_at"])
        reconstruction.refresh_from_db(fields=["attempts"])
        attempt = reconstruction.attempts

    written: list[str] = []
    try:
        version, model = model_version_load_active()
        with default_storage.open(reconstruction.original.name, "rb") as handle:
            data = handle.read()
        result = model.reconstruct(io.BytesIO(data))
        prefix = _reconstruction_prefix(reconstruction.owner_id, reconstruction.uuid)
        written.append(default_storage.save(f"{prefix}/model_input.png", ContentFile(_png(result.model_input))))
        written.append(default_storage.save(f"{prefix}/reconstruction.png", ContentFile(_png(result.reconstruction))))
    except runtime.ImageError as error:
        _delete_keys(written)
        _reconstruction_fail(reconstruction_id, attempt, f"{error} Please try another photo.")
        return Reconstruction.objects.filter(pk=reconstruction_id).first()
    except SoftTimeLimitExceeded:
        _delete_keys(written)
        _reconstruction_fail(
            reconstruction_id, attempt, "The reconstruction took too long and was stopped. Please try again later."
        )
        return Reconstruction.objects.filter(pk=reconstruction_id).first()
    except Exception:
        logger.exception("reconstruction %s failed", reconstruction_id)
        _delete_keys(written)
        _reconstruction_fail(
            reconstruction_id,
            attempt,
            "Something went wrong on our side while reconstructing this photo. Please press “Try again”; "
            f"if it keeps failing, tell the site's staff (reference {reconstruction.uuid}).",
        )
        return Reconstruction.objects.filter(pk=reconstruction_id).first()

    scores = result.scores
    updated = Reconstruction.objects.filter(pk=reconstruction_id, status=Status.RUNNING, attempts=attempt).update(
        status=Status.DONE,
        error="",
        model_input=written[0],
        reconstruction=written[1],
        mse=scores.mse,
        psnr=scores.psnr,
        ssim=scores.ssim,
        kl=scores.kl,
        car_likeness=scores.car_likeness,
        model_version=version,
        finished_at=timezone.now(),
    )
    if not updated:
        # Deleted meanwhile, or a later attempt took over: our files are nobody's.
        _delete_keys(written)
    return Reconstruction.objects.filter(pk=reconstruction_id).first()


def reconstruction_is_stuck(reconstruction: Reconstruction) -> bool:
    """Pending or running for longer than any job may take: its queue message was lost (Redis wiped)."""
    if reconstruction.is_finished:
        return False
    since = reconstruction.started_at or reconstruction.created_at
    return timezone.now() - since > timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)


def reconstruction_retry(reconstruction: Reconstruction) -> Reconstruction:
    """Queue a failed (or stuck) reconstruction again."""
    if not (reconstruction.status == Status.FAILED or reconstruction_is_stuck(reconstruction)):
        raise ValidationError("Only a failed reconstruction can be tried again.")
    pk = reconstruction.pk
    Reconstruction.objects.filter(pk=pk).update(
        status=Status.PENDING, error="", attempts=0, started_at=None, finished_at=None
    )
    if settings.RECONSTRUCT_MODE == "sync":
        reconstruction_run(pk)
    else:
        transaction.on_commit(lambda: reconstruction_dispatch(pk))
    reconstruction.refresh_from_db()
    return reconstruction


def reconstruction_delete(reconstruction: Reconstruction) -> None:
    """Delete the row, then (once that is committed) its files; see reconstruct/signals.py."""
    with transaction.atomic():
        reconstruction.delete()


def reconstruction_delete_files(reconstruction: Reconstruction) -> None:
    keys = reconstruction.file_keys()
    transaction.on_commit(lambda: _delete_keys(keys))


# --- API tokens ------------------------------------------------------------------------------------

API_TOKEN_PREFIX = "cs_"


def _token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_regenerate(user: AbstractBaseUser) -> str:
    """Create or replace the user's API token; returns the key, which is stored only as a hash."""
    key = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.update_or_create(
        user=user, defaults={"key_hash": _token_hash(key), "prefix": key[:8], "last_used_at": None}
    )
    return key


def api_token_revoke(user: AbstractBaseUser) -> None:
    ApiToken.objects.filter(user=user).delete()


def api_token_authenticate(key: str) -> AbstractBaseUser | None:
    """The active user owning this key, or None."""
    token = ApiToken.objects.select_related("user").filter(key_hash=_token_hash(key.strip())).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    # One write per minute at most, not one per request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


# --- Model registry --------------------------------------------------------------------------------

MODEL_REQUIRED_FILES = (runtime.ENCODER_FILE, runtime.DECODER_FILE, runtime.METADATA_FILE)
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_version_register(
    model_dir: str | Path,
    *,
    source: str,
    created_by: AbstractBaseUser | None = None,
    name: str | None = None,
    metrics: dict | None = None,
    notes: str = "",
) -> ModelVersion:
    """Copy an exported model directory into storage (models/<name>/...) and add it to the registry.

    The model is loaded once first, so a broken export never gets registered. The version is not
    activated (see model_version_activate). ``name`` defaults to metadata.json's ``version``.
    """
    model_dir = Path(model_dir)
    missing = [f for f in MODEL_REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ValueError(f"{model_dir} is not an exported model: missing {', '.join(missing)}")
    runtime.load_model(model_dir)  # raises if the ONNX files or the metadata are unusable
    metadata = json.loads((model_dir / runtime.METADATA_FILE).read_text())
    name = name or str(metadata.get("version", ""))
    if not _VERSION_NAME.match(name):
        raise ValueError(f"invalid model version name {name!r}: use letters, digits, '.', '_' and '-'")
    if ModelVersion.objects.filter(name=name).exists():
        raise ValueError(f"model version {name!r} is already registered")

    files: dict[str, dict] = {}
    try:
        for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            with path.open("rb") as handle:
                key = default_storage.save(f"models/{name}/{path.name}", File(handle, name=path.name))
            files[path.name] = {"key": key, "size": path.stat().st_size, "sha256": _sha256_file(path)}
        return ModelVersion.objects.create(
            name=name,
            source=source,
            files=files,
            metadata=metadata,
            metrics=metrics if metrics is not None else metadata.get("metrics", {}),
            notes=notes,
            created_by=created_by,
        )
    except BaseException:
        # Also when another process registered the same name first (IntegrityError).
        _delete_keys([entry["key"] for entry in files.values()])
        raise


def model_version_register_default() -> ModelVersion:
    """Register the model shipped in ml/weights/default (idempotent); activate it if nothing is active."""
    metadata_path = runtime.DEFAULT_MODEL_DIR / runtime.METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(
            f"The shipped model is missing ({metadata_path}). Restore it with `git checkout ml/weights/default` "
            "or build it with `make train`."
        )
    name = str(json.loads(metadata_path.read_text())["version"])
    version = ModelVersion.objects.filter(name=name).first()
    if version is None:
        try:
            version = model_version_register(
                runtime.DEFAULT_MODEL_DIR,
                source=ModelVersion.Source.SHIPPED,
                notes="The default model shipped in ml/weights/default.",
            )
        except IntegrityError:
            version = ModelVersion.objects.get(name=name)  # another process registered it first
    if not ModelVersion.objects.filter(is_active=True).exists():
        try:
            model_version_activate(version, None, note="The shipped default model, activated on first start.")
        except IntegrityError:
            pass  # another process activated one at the same moment
        version.refresh_from_db()
    return version


def model_version_activate(version: ModelVersion, user: AbstractBaseUser | None, note: str = "") -> ModelActivation:
    """Make ``version`` the one model every process uses; records who did it in ModelActivation.

    Every web and worker process notices on its next reconstruction (model_version_load_active).
    """
    with transaction.atomic():
        previous = ModelVersion.objects.select_for_update().filter(is_active=True).first()
        if previous is not None and previous.pk == version.pk:
            latest = version.activations.first()
            if latest is not None:
                return latest
        if previous is not None:
            # Deactivate first: the partial unique constraint allows one active row at any moment.
            ModelVersion.objects.filter(pk=previous.pk).update(is_active=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
        version.is_active = True
        return ModelActivation.objects.create(version=version, previous=previous, activated_by=user, note=note)


def model_version_get_active() -> ModelVersion:
    """The active model version; on a fresh database this registers and activates the shipped one."""
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        model_version_register_default()
        version = ModelVersion.objects.get(is_active=True)
    return version


def _model_version_digest(version: ModelVersion) -> str:
    combined = "".join(f"{name}:{entry['sha256']};" for name, entry in sorted(version.files.items()))
    return hashlib.sha256(combined.encode()).hexdigest()[:16]


def model_version_local_dir(version: ModelVersion) -> Path:
    """A local directory with the version's files, downloaded from storage once per machine.

    Named by the files' hashes, so it can never hold another version's files; filled in a
    temporary directory and renamed into place, so a crash or a concurrent process never sees it
    half written.
    """
    root = Path(settings.MODEL_CACHE_DIR)
    target = root / f"{version.name}-{_model_version_digest(version)}"
    if (target / runtime.METADATA_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
    try:
        for name, entry in version.files.items():
            digest = hashlib.sha256()
            with default_storage.open(entry["key"], "rb") as source, (staging / name).open("wb") as target_file:
                for chunk in iter(lambda: source.read(1 << 20), b""):
                    digest.update(chunk)
                    target_file.write(chunk)
            if digest.hexdigest() != entry["sha256"]:
                raise ValueError(f"model version {version.name}: {name} in storage does not match its recorded hash")
        try:
            staging.rename(target)
        except OSError:
            if not (target / runtime.METADATA_FILE).is_file():
                raise  # not "another process got there first": a real error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_loaded_lock = threading.Lock()
_loaded: dict[str, runtime.Model] = {}


def model_version_load(version: ModelVersion) -> runtime.Model:
    """The version's ONNX model, loaded once per process (and dropped when another one is loaded)."""
    digest = _model_version_digest(version)
    with _loaded_lock:
        model = _loaded.get(digest)
        if model is None:
            model = runtime.load_model(model_version_local_dir(version))
            _loaded.clear()
            _loaded[digest] = model
        return model


def model_version_load_active() -> tuple[ModelVersion, runtime.Model]:
    """The active version and its model. One small query per call: an activation in the admin
    reaches every process at its next reconstruction, without a restart and without reloading."""
    version = model_version_get_active()
    return version, model_version_load(version)
