"""The life of one reconstruction: create (store the upload, queue it), run (the model), retry, delete.

``reconstruction_run`` is what a Celery worker (or, on Lambda, the request itself) executes.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone
from PIL import Image

from ml import framing, runtime
from reconstruct.images import png_bytes
from reconstruct.models import ModelVersion, Reconstruction
from reconstruct.registry.services import model_version_load_active
from reconstruct.services.uploads import (
    PreparedUpload,
    reconstruction_rate_consume,
    upload_prepare,
)
from reconstruct.storage import (
    StorageUnavailable,
    storage_delete_keys,
    storage_error_is_transient,
    storage_save_all,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

Status = Reconstruction.Status


def _reconstruction_prefix(owner_id: int, public_id: uuid.UUID) -> str:
    return f"reconstructions/{owner_id}/{public_id}"


def reconstruction_create(*, user: AbstractBaseUser, upload: File | PreparedUpload) -> Reconstruction:
    """Store an upload and queue its reconstruction; returns the new row (pending, or finished in sync mode).

    Callers check the hourly limit first (``reconstruction_rate_check``: one query, before the photo is read);
    here the upload is counted under a lock (``reconstruction_rate_consume``), the check that holds under
    concurrency. Raises ValidationError for a file that is not a usable image (UploadRateLimited, a subclass, over
    the hourly limit), StorageUnavailable when the storage does not answer (nothing is kept then). The files are
    written before the row exists, so a row never points at a missing file; the job is queued only once the row
    is committed, so a worker never looks for a row that is not there yet.
    """
    prepared = upload if isinstance(upload, PreparedUpload) else upload_prepare(upload)
    counted = reconstruction_rate_consume(user)  # the limit's own check, safe under concurrency
    # Sync mode: the model starts on the photo now, while the original and thumbnail are written below.
    precomputed = _reconstruction_precompute(prepared) if settings.RECONSTRUCT_MODE == "sync" else None
    public_id = uuid.uuid4()
    prefix = _reconstruction_prefix(user.pk, public_id)
    written: list[str] = []
    # Sync mode runs the first attempt in this request: the row is inserted already claimed by it (running,
    # attempt 1), which saves reconstruction_run's claim (a locking transaction: 4 queries).
    claimed = {"status": Status.RUNNING, "attempts": 1, "started_at": timezone.now()} if precomputed else {}
    try:
        written += storage_save_all(
            [
                (f"{prefix}/original.{prepared.extension}", ContentFile(prepared.content)),
                (f"{prefix}/thumbnail.jpg", ContentFile(prepared.thumbnail)),
            ]
        )
        reconstruction = Reconstruction.objects.create(
            uuid=public_id,
            owner=user,
            **(claimed or {"status": Status.PENDING}),
            original=written[0],
            thumbnail=written[1],
            original_name=prepared.name,
            original_format=prepared.format[:10],
            width=prepared.width,
            height=prepared.height,
        )
    except BaseException as error:
        storage_delete_keys(written)
        if counted is not None:
            counted.delete()  # nothing was kept: not an upload
        if storage_error_is_transient(error):
            raise StorageUnavailable(str(error)) from error
        raise
    pk = reconstruction.pk
    if settings.RECONSTRUCT_MODE == "sync":
        # In this process and on this database connection: the row is visible, commit or not.
        if claimed:
            finished = _reconstruction_attempt(reconstruction, 1, prepared.content, precomputed=precomputed)
        else:  # the active model could not be had before the writes: the run tries again, fails the row readably
            finished = reconstruction_run(pk, original=prepared.content)
        if finished is None:
            reconstruction.refresh_from_db()  # deleted meanwhile: says so (DoesNotExist)
        else:
            reconstruction = finished
    else:
        # Runs at once outside a transaction, or after the caller's transaction commits. The row in hand learns
        # whether its job reached the queue (queued_at), so the request does not wait for a job that is not queued.
        def dispatch() -> None:
            reconstruction.queued_at = reconstruction_dispatch(pk)

        transaction.on_commit(dispatch)
    return reconstruction


# Sync mode's model runs beside the request's storage writes (reconstruction_create): a thread each, at most this
# many at once in a process (ONNX Runtime releases the GIL while the model runs; the writes mostly wait on S3).
_precompute_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="carsite-precompute")

Precomputed = tuple[ModelVersion, "Future[framing.Framed]"]


def _reconstruction_precompute(prepared: PreparedUpload) -> Precomputed | None:
    """Start ``framing.photo_reconstruct`` on the upload's stored original with the active model in a thread
    (from the upload's own decode where that is the one it needs); returns the version and the future, or None
    when the active model cannot be had now (the run then tries again and fails the row readably). The database
    is read here, in the request's thread: the thread itself runs only the model."""
    try:
        version, model = model_version_load_active()
    except Exception as error:  # reconstruction_run fails the row with a reason
        logger.warning("could not load the active model before storing the upload: %r", error)
        return None
    return version, _precompute_pool.submit(
        framing.photo_reconstruct, model, io.BytesIO(prepared.content), decoded=prepared.decoded
    )


def reconstruction_dispatch(reconstruction_id: int) -> datetime | None:
    """Run the reconstruction now (sync mode) or queue it for a Celery worker. Returns when it was queued (the
    row's new ``queued_at``), or None: sync mode, or the broker did not take it (the sweep queues it later)."""
    if settings.RECONSTRUCT_MODE == "sync":
        reconstruction_run(reconstruction_id)
        return None
    from kombu.exceptions import OperationalError as QueueError

    from reconstruct.tasks import reconstruction_run_task

    try:
        reconstruction_run_task.delay(reconstruction_id)
    except (QueueError, OSError) as error:
        # The row stays pending with no queued_at: the sweep (reconstruct/services/recovery.py) queues it
        # once the broker answers again, so the upload is kept and its 202 "pending" stays true.
        logger.error("could not queue reconstruction %s (the sweep will queue it later): %s", reconstruction_id, error)
        return None
    queued_at = timezone.now()
    _reconstruction_mark_queued(reconstruction_id, queued_at)
    return queued_at


def _reconstruction_mark_queued(reconstruction_id: int, queued_at: datetime) -> None:
    """Set ``queued_at`` on reconstruction ``reconstruction_id`` if it is still pending (a worker that claimed it
    first has set it already): 0.07 instead of ``QuerySet.update``'s 0.25 ms of CPU (``_reconstruction_update``)."""
    _reconstruction_update(reconstruction_id, {"queued_at": queued_at}, status=Status.PENDING)


def _reconstruction_update(reconstruction_id: int, values: dict[str, object], **where: object) -> int:
    """``UPDATE`` reconstruction ``reconstruction_id`` to ``values`` (field name -> value) where each field of
    ``where`` still has its value; returns the rows changed (0 or 1).

    One statement written here rather than ``QuerySet.update``, which builds and compiles the same SQL for each
    upload and each job (docs/performance.md, stop 29). Each value is prepared as the ORM's UPDATE prepares it: a
    model instance as its primary key, then the field's ``get_db_prep_save`` (a lookup's value with
    ``get_db_prep_value``)."""
    meta = Reconstruction._meta
    column = connection.ops.quote_name
    assignments, conditions, parameters = [], [f"{column(meta.pk.column)} = %s"], []
    for name, value in values.items():
        field = meta.get_field(name)
        if hasattr(value, "prepare_database_save"):
            value = value.prepare_database_save(field)
        assignments.append(f"{column(field.column)} = %s")
        parameters.append(field.get_db_prep_save(value, connection))
    parameters.append(reconstruction_id)
    for name, value in where.items():
        field = meta.get_field(name)
        conditions.append(f"{column(field.column)} = %s")
        parameters.append(field.get_db_prep_value(value, connection))
    sql = f"UPDATE {column(meta.db_table)} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, parameters)
        return cursor.rowcount


class NonFiniteResult(ValueError):
    """The model's latent or scores hold NaN or infinity (damaged weights): never shown as a result."""


def _result_is_finite(result: runtime.Result) -> bool:
    """Whether the posterior mean and every score are finite numbers (car-likeness may be None: uncalibrated)."""
    scores = [value for value in result.scores.to_dict().values() if value is not None]
    return bool(np.isfinite(result.latent).all()) and all(math.isfinite(value) for value in scores)


def _reconstruction_fail(reconstruction_id: int, attempt: int, message: str) -> None:
    Reconstruction.objects.filter(pk=reconstruction_id, status=Status.RUNNING, attempts=attempt).update(
        status=Status.FAILED, error=message, finished_at=timezone.now()
    )


def _reconstruction_release(reconstruction_id: int, attempt: int) -> bool:
    """Hand a running attempt back (pending, the attempt not counted) for a retry; False if it is no longer ours."""
    return bool(
        Reconstruction.objects.filter(pk=reconstruction_id, status=Status.RUNNING, attempts=attempt).update(
            status=Status.PENDING, attempts=attempt - 1, queued_at=timezone.now()
        )
    )


def _reconstruction_discard_leftovers(reconstruction: Reconstruction) -> None:
    """Delete what an earlier attempt, killed between storing its PNGs and its UPDATE, left in the row's folder:
    every file there but the ones the row references (the original and its thumbnail)."""
    prefix = _reconstruction_prefix(reconstruction.owner_id, reconstruction.uuid)
    keep = set(reconstruction.file_keys())
    try:
        _, names = default_storage.listdir(prefix)
    except Exception:  # storage down: the attempt itself will say so; a leftover file is harmless
        logger.warning("could not list %s for leftovers of an earlier attempt", prefix, exc_info=True)
        return
    storage_delete_keys(key for name in names if (key := f"{prefix}/{name}") not in keep)


def reconstruction_run(
    reconstruction_id: int,
    original: bytes | None = None,
    *,
    storage_retry: bool = False,
) -> Reconstruction | None:
    """Reconstruct one upload with the active model; idempotent, safe to run twice or after a crash.

    ``original``: the stored original's bytes when the caller has them (sync mode, in the upload's request),
    which saves reading them back from storage (an S3 GET on Lambda).

    A finished row (done or failed) is left alone. Each run claims the row by incrementing
    ``attempts`` and writes its PNGs under fresh keys before one UPDATE references them all, and
    only if the row is still this attempt's: a crash leaves at most unreferenced files, never a
    half result, and of two overlapping runs only the later one's files stay referenced.
    Returns the row, or None if it was deleted meanwhile.

    When the storage does not answer (reconstruct/storage.py: storage_error_is_transient) and ``storage_retry``
    is set, the row goes back to pending without counting the attempt and StorageUnavailable is raised for the
    caller to try again later (the Celery task, with a back-off); otherwise the row fails with that reason.
    """
    reconstruction = _reconstruction_claim(reconstruction_id)
    if reconstruction is None:
        reconstruction = Reconstruction.objects.filter(pk=reconstruction_id).first()
        if reconstruction is None:
            logger.info("reconstruction %s was deleted before it ran", reconstruction_id)
            return None
        if reconstruction.attempts >= settings.RECONSTRUCT_MAX_ATTEMPTS and not reconstruction.is_finished:
            # Each earlier attempt died with its worker (acks_late redelivered the job): stop here rather than let
            # one poisonous image kill workers forever. Conditional, as the claim: a retry meanwhile wins.
            error = (
                f"The reconstruction was interrupted {reconstruction.attempts} times (its worker stopped), "
                "so we gave up. Please try again, or try a smaller photo."
            )
            Reconstruction.objects.filter(
                pk=reconstruction_id, status=reconstruction.status, attempts=reconstruction.attempts
            ).update(status=Status.FAILED, error=error, finished_at=timezone.now())
            return Reconstruction.objects.filter(pk=reconstruction_id).first()
        # Finished; or made claimable again since the claim (a retry, the sweep), which queued a job of its own
        # that will run it: this one leaves it alone, as the old locking claim did.
        return reconstruction
    attempt = reconstruction.attempts
    return _reconstruction_attempt(reconstruction, attempt, original, storage_retry=storage_retry)


def _reconstruction_claim(reconstruction_id: int) -> Reconstruction | None:
    """Claim reconstruction ``reconstruction_id`` for a new attempt in one statement: ``UPDATE ... RETURNING``
    (SQLite 3.35+ and PostgreSQL) sets it running, counts the attempt and returns the whole row, only while it is
    pending or running and has attempts left (RECONSTRUCT_MAX_ATTEMPTS). A row without ``queued_at`` gets the
    claim's time there: its job did reach the queue (Redis took the message while the upload's publish timed
    out), and a finished job said ``"queued_at": null``, "not in the queue yet". Returns the claimed row
    (``attempts`` is this attempt's number), or None when there was nothing to claim: deleted, finished, or out of
    attempts.

    Atomic by itself, so two workers given the same job never claim one attempt twice; it replaces a transaction
    of four statements (BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT), 1.06 -> 0.32 ms of CPU on SQLite.
    """
    table = connection.ops.quote_name(Reconstruction._meta.db_table)
    column = connection.ops.quote_name
    sql = (
        f"UPDATE {table} SET {column('status')} = %s, {column('attempts')} = {column('attempts')} + 1, "
        f"{column('started_at')} = %s, {column('queued_at')} = COALESCE({column('queued_at')}, %s) "
        f"WHERE {column('id')} = %s AND {column('status')} IN (%s, %s) AND {column('attempts')} < %s RETURNING *"
    )
    now = timezone.now()
    parameters = [
        Status.RUNNING,
        now,
        now,  # a job that reached a worker was queued, even when the broker's answer did not reach the upload
        reconstruction_id,
        Status.PENDING,
        Status.RUNNING,
        settings.RECONSTRUCT_MAX_ATTEMPTS,
    ]
    claimed = list(Reconstruction.objects.raw(sql, parameters))
    return claimed[0] if claimed else None


def _reconstruction_attempt(
    reconstruction: Reconstruction,
    attempt: int,
    original: bytes | None = None,
    *,
    storage_retry: bool = False,
    precomputed: Precomputed | None = None,
) -> Reconstruction | None:
    """Attempt number ``attempt`` of a row already claimed for it (running, ``attempts == attempt``): the model,
    the result's PNGs, then one UPDATE that only lands if the row is still this attempt's (reconstruction_run).

    ``precomputed``: the model version and the ``framing.photo_reconstruct`` already started on ``original``
    (``_reconstruction_precompute``, sync mode), used by the first attempt instead of running the model here.
    Returns the row as the attempt left it, or None if it was deleted meanwhile."""
    reconstruction_id = reconstruction.pk
    if attempt > 1:
        _reconstruction_discard_leftovers(reconstruction)
    written: list[str] = []
    try:
        if precomputed is not None and attempt == 1:
            version, pending = precomputed
            framed = pending.result()  # raises what photo_reconstruct raised, handled below
        else:
            version, model = model_version_load_active()
            if original is None:
                with default_storage.open(reconstruction.original.name, "rb") as handle:
                    original = handle.read()
            framed = framing.photo_reconstruct(model, io.BytesIO(original))
        result = framed.result
        if not _result_is_finite(result):
            raise NonFiniteResult(f"model {version.name} gave non-finite outputs or scores: {result.scores}")
        prefix = _reconstruction_prefix(reconstruction.owner_id, reconstruction.uuid)
        written += storage_save_all(
            [
                (f"{prefix}/model_input.png", ContentFile(png_bytes(result.model_input))),
                (f"{prefix}/reconstruction.png", ContentFile(png_bytes(result.reconstruction))),
            ]
        )
    except runtime.ImageError as error:
        storage_delete_keys(written)
        # The decoder's messages already say what to do ("Please use a photo saved as ..."): not twice.
        reason = str(error) if "Please" in str(error) else f"{error} Please try another photo."
        _reconstruction_fail(reconstruction_id, attempt, reason)
        return Reconstruction.objects.filter(pk=reconstruction_id).first()
    except NonFiniteResult as error:
        logger.error("reconstruction %s: %s", reconstruction_id, error)
        _reconstruction_fail(
            reconstruction_id,
            attempt,
            "The model gave invalid numbers for this photo (not finite), so there is no result to show. This is "
            f"a fault on our side, not in your photo; please tell the site's staff (reference {reconstruction.uuid}).",
        )
        return Reconstruction.objects.filter(pk=reconstruction_id).first()
    except Exception as error:
        storage_delete_keys(written)
        if _is_soft_time_limit(error):
            _reconstruction_fail(
                reconstruction_id, attempt, "The reconstruction took too long and was stopped. Please try again later."
            )
            return Reconstruction.objects.filter(pk=reconstruction_id).first()
        if storage_error_is_transient(error):
            logger.warning("reconstruction %s: the storage did not answer: %r", reconstruction_id, error)
            if storage_retry and _reconstruction_release(reconstruction_id, attempt):
                raise StorageUnavailable(str(error)) from error
            _reconstruction_fail(
                reconstruction_id,
                attempt,
                "The site's file storage did not answer, so the reconstruction could not finish (your photo is "
                "kept). Please press “Try again” in a few minutes.",
            )
            return Reconstruction.objects.filter(pk=reconstruction_id).first()
        logger.exception("reconstruction %s failed", reconstruction_id)
        _reconstruction_fail(
            reconstruction_id,
            attempt,
            "Something went wrong on our side while reconstructing this photo. Please press “Try again”; "
            f"if it keeps failing, tell the site's staff (reference {reconstruction.uuid}).",
        )
        return Reconstruction.objects.filter(pk=reconstruction_id).first()

    scores = result.scores
    outcome = {
        "status": Status.DONE,
        "error": "",
        "model_input": written[0],
        "reconstruction": written[1],
        "mse": scores.mse,
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "kl": scores.kl,
        "car_likeness": framed.car_likeness if framed.car_likeness is not None else scores.car_likeness,
        "car_box": framed.box.as_list() if framed.box else None,
        "frame": framed.frame.as_list(),
        "facing": framed.facing or "",
        "mirrored": framed.mirrored,
        "model_version": version,
        "latent": [float(value) for value in result.latent],
        "finished_at": timezone.now(),
    }
    if not _reconstruction_finish(reconstruction_id, attempt, outcome):
        # Deleted meanwhile, or a later attempt took over: our files are nobody's.
        storage_delete_keys(written)
        return Reconstruction.objects.filter(pk=reconstruction_id).first()
    # The row is what this UPDATE wrote: no need to read it back.
    for name, value in outcome.items():
        setattr(reconstruction, name, value)
    return reconstruction


def _reconstruction_finish(reconstruction_id: int, attempt: int, outcome: dict[str, object]) -> bool:
    """Write ``outcome`` (field name -> value) to reconstruction ``reconstruction_id`` if it is still running
    attempt ``attempt``; whether it was (``_reconstruction_update``: one statement, not compiled each job)."""
    return _reconstruction_update(reconstruction_id, outcome, status=Status.RUNNING, attempts=attempt) == 1


def reconstruction_runtime_preload() -> dict[str, str]:
    """Do now what a process's first reconstruction would otherwise do first: read the active model version
    (registering the shipped one on a new database), load its ONNX sessions and the locator's and facing
    classifier's, run them once on a blank 256x128 photo (ONNX Runtime's first run of a session costs several
    times a later one), and open the media storage's client (on S3 a boto3 resource: about 0.15 s of CPU,
    no request). Called once per process at startup where RECONSTRUCT_PRELOAD is on (AWS Lambda's init phase).

    Never raises: a database that is not migrated yet (the deploy's own ``manage migrate`` starts a container
    too) or a storage that does not answer is logged as a warning, and the first request does the rest. Returns
    ``{"model": outcome, "storage": outcome}``, each "ready" or the error's text.
    """
    outcome = {"model": "ready", "storage": "ready"}
    try:
        _version, model = model_version_load_active()
        blank = io.BytesIO()
        Image.new("RGB", (256, 128), (128, 128, 128)).save(blank, "PNG")
        framing.photo_reconstruct(model, blank)
    except Exception as error:
        outcome["model"] = f"{type(error).__name__}: {error}"
        logger.warning("preload: the model was not loaded at startup (the first request will): %s", outcome["model"])
    try:
        getattr(default_storage, "connection", None)  # S3Storage's boto3 resource; the local disk has none
    except Exception as error:
        outcome["storage"] = f"{type(error).__name__}: {error}"
        logger.warning("preload: the media storage's client was not made at startup: %s", outcome["storage"])
    return outcome


def _is_soft_time_limit(error: BaseException) -> bool:
    """True for Celery's soft time limit (``SoftTimeLimitExceeded``, billiard's class, which Celery re-exports).

    Checked without importing Celery: only a Celery worker raises it, and there billiard is loaded; a process
    that never loaded billiard (sync mode, Lambda) cannot have raised it, and does not pay the import.
    """
    exceptions = sys.modules.get("billiard.exceptions")
    return exceptions is not None and isinstance(error, exceptions.SoftTimeLimitExceeded)


def reconstruction_is_stuck(reconstruction: Reconstruction) -> bool:
    """Pending or running for longer than any job may take (RECONSTRUCT_STUCK_AFTER s): its worker died or its
    queue message was lost. The sweep (reconstruct/services/recovery.py) queues such jobs again by itself; the
    page and the API offer the same retry meanwhile."""
    if reconstruction.is_finished:
        return False
    return timezone.now() > reconstruction_stuck_at(reconstruction)


def reconstruction_stuck_at(reconstruction: Reconstruction) -> datetime:
    """When an unfinished ``reconstruction`` counts as stuck (``reconstruction_is_stuck``): RECONSTRUCT_STUCK_AFTER
    s after its job started, or after the upload while it never started."""
    since = reconstruction.started_at or reconstruction.created_at
    return since + timedelta(seconds=settings.RECONSTRUCT_STUCK_AFTER)


def reconstruction_retry(reconstruction: Reconstruction) -> Reconstruction:
    """Queue a failed (or stuck) reconstruction again."""
    if not (reconstruction.status == Status.FAILED or reconstruction_is_stuck(reconstruction)):
        raise ValidationError("Only a failed reconstruction can be tried again.")
    pk = reconstruction.pk
    Reconstruction.objects.filter(pk=pk).update(
        status=Status.PENDING, error="", attempts=0, started_at=None, finished_at=None, queued_at=None
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
    """Delete a deleted row's files once the deletion is committed (the post_delete signal calls this)."""
    keys = reconstruction.file_keys()
    transaction.on_commit(lambda: storage_delete_keys(keys))
